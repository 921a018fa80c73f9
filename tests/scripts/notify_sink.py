"""A notification command for the tests: appends the JSON it reads on stdin to a file
(one line each), then exits with the status given (default 0)."""

import json
import sys

if __name__ == "__main__":
    out, status = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0
    message = json.loads(sys.stdin.buffer.read())
    with open(out, "a", encoding="utf-8") as file:
        file.write(json.dumps(message) + "\n")
    if status:
        print(f"notify_sink: told to fail with {status}", file=sys.stderr)
    sys.exit(status)
