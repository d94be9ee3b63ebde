"""``python -m spaceserve.healthcheck``: the image's HEALTHCHECK, with no curl in the image.

Healthy when ``/health`` answers 200, and also while it answers 503 with ``"status": "loading"``:
a cold start downloads and loads the model for minutes, and a container marked unhealthy then
would only be restarted into the same wait. A failed load or no answer is unhealthy.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request


def check(host: str, port: int, timeout: float = 8.0) -> tuple[bool, str]:
    # The server may listen on all interfaces; the check always comes from inside the container.
    target = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    if ":" in target:
        target = f"[{target}]"
    url = f"http://{target}:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return True, f"{response.status}"
    except urllib.error.HTTPError as exc:
        try:
            status = json.loads(exc.read() or b"{}").get("status")
        except (ValueError, AttributeError):
            status = None
        return status == "loading", f"{exc.code} {status or ''}".strip()
    except (OSError, ValueError) as exc:
        return False, f"no answer from {url}: {exc}"


def main() -> int:
    healthy, detail = check(os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000")))
    sys.stdout.write(f"{'healthy' if healthy else 'unhealthy'}: {detail}\n")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
