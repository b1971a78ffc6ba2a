"""Run one `unlearnd` command in this process and print its peak RSS as JSON (last line)."""

from __future__ import annotations

import json
import resource
import sys

from app.cli import main

if __name__ == "__main__":
    code = main(sys.argv[1:])
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux reports KiB
    print(json.dumps({"exit_code": code, "maxrss_mib": peak_kib / 1024}))
    sys.exit(code)
