"""What a warm-started run runs in tests/unit/test_warm.py (in place of `prefect.engine`)."""

import json
import os
import signal
import sys
import time

if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "report"
    if what == "report":
        print(
            json.dumps(
                {
                    "argv": sys.argv[1:],
                    "cwd": os.getcwd(),
                    "pid": os.getpid(),
                    "env": os.environ.get("WARM_PROBE"),
                }
            )
        )
        print("to stderr", file=sys.stderr)
        sys.exit(int(os.environ.get("WARM_EXIT", "0")))
    if what == "term":
        signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), sys.exit(7)))
    print(f"sleeping {os.getpid()}", flush=True)
    time.sleep(60)
