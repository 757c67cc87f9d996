"""Run a command; print its wall time, peak RSS and CPU seconds (its own process tree) and exit code as one
JSON line.

A separate process, so that RUSAGE_CHILDREN holds only the measured command.
"""

import json
import resource
import subprocess
import sys
import time

started = time.monotonic()
completed = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
code = completed.returncode
if code:
    sys.stderr.write(completed.stderr.decode(errors="replace")[-2000:])
seconds = time.monotonic() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
# Linux reports ru_maxrss in KiB. CPU: user and system seconds of the whole waited-for process tree.
print(json.dumps({"seconds": seconds, "maxrss_bytes": usage.ru_maxrss * 1024, "user_s": usage.ru_utime,
                  "sys_s": usage.ru_stime, "returncode": code}))
