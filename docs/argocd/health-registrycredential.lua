-- Argo CD health check for imagesync.dev/RegistryCredential
-- (resource.customizations.health.imagesync.dev_RegistryCredential). Ready True: the credential's Secret
-- resolves (and no run saw the registry refuse it); Stalled True: it is missing, malformed or refused.
-- Lua 5.1 (Argo CD's gopher-lua) and 5.4.
local hs = {}

local function condition(kind)
  if obj.status == nil or type(obj.status.conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  local text = fallback
  if c ~= nil then
    if c.reason ~= nil and c.reason ~= "" then
      text = c.reason
    end
    if c.message ~= nil and c.message ~= "" then
      text = text .. ": " .. c.message
    end
  end
  return text
end

local ready = condition("Ready")
local generation = obj.metadata and obj.metadata.generation
if ready == nil or (generation ~= nil and obj.status.observedGeneration ~= nil
    and obj.status.observedGeneration ~= generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the imagesync operator to check the credential"
  return hs
end

local stalled = condition("Stalled")
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
elseif ready.status == "False" or (stalled ~= nil and stalled.status == "True") then
  hs.status = "Degraded"
  hs.message = describe(ready, "Not ready")
else
  hs.status = "Progressing"
  hs.message = describe(ready, "Checking")
end
return hs
