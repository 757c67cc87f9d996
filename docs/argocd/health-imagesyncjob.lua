-- Argo CD health check for imagesync.dev/ImageSyncJob (resource.customizations.health.imagesync.dev_ImageSyncJob).
-- Reads the kstatus conditions the operator writes (Ready, Reconciling, Stalled) and status.observedGeneration;
-- falls back on status.phase for an operator that predates them. Lua 5.1 (Argo CD's gopher-lua) and 5.4.
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

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the imagesync operator"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil and obj.status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready = condition("Ready")
local reconciling = condition("Reconciling")
local stalled = condition("Stalled")
local workers = condition("WorkersReady")

if ready == nil then
  -- An operator without kstatus conditions: the phase says as much.
  local phase = obj.status.phase
  if phase == "Succeeded" then
    hs.status = "Healthy"
  elseif phase == "Failed" or phase == "PartiallyFailed" then
    hs.status = "Degraded"
  elseif phase == "Suspended" then
    hs.status = "Suspended"
  else
    hs.status = "Progressing"
  end
  hs.message = "phase " .. tostring(phase)
  return hs
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
elseif workers ~= nil and workers.status == "False" and reconciling ~= nil and reconciling.status == "True" then
  -- A run whose worker pods cannot start (ImagePullBackOff, Unschedulable, ...) waits forever: show it.
  hs.status = "Degraded"
  hs.message = describe(workers, "WorkersNotReady")
elseif reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Reconciling")
elseif ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
elseif obj.status.phase == "Suspended" or ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(ready, "Suspended")
else
  hs.status = "Progressing"
  hs.message = describe(ready, "Not ready")
end
return hs
