"""Child process of tests/review/test_lockout.py (not a test module).

``guess URL USERNAME N GO_FILE``: wait for GO_FILE, then try N wrong passwords for USERNAME; prints
a JSON summary with how many real password hashes this process verified (``checked``; checks of
the dummy hash are counted apart) and the distinct messages it got.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from medcl.review import auth
from medcl.review.db import Store
from medcl.review.errors import AuthError


class CountingHasher(PasswordHasher):
    """argon2id with small costs that counts verifications of real and of the dummy hash."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.real = 0
        self.dummy = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        if hash == auth._DUMMY_HASH:
            self.dummy += 1
        else:
            self.real += 1
        return super().verify(hash, password)


def guess(url: str, username: str, n: int, go: Path) -> dict[str, Any]:
    hasher = CountingHasher()
    auth._hasher = hasher
    auth._DUMMY_HASH = hasher.hash("dummy password")
    store = Store.open(url, allowed_roots=[])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.005)
    messages = set()
    for i in range(n):
        try:
            auth.authenticate(store, username, f"wrong guess {i}")
        except AuthError as exc:
            messages.add(str(exc))
    store.close()
    return {"checked": hasher.real, "dummy": hasher.dummy, "messages": sorted(messages)}


if __name__ == "__main__":
    _, url, name, count, go_file = sys.argv[:5]
    print(json.dumps(guess(url, name, int(count), Path(go_file))), flush=True)
