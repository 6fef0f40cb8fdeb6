"""Tasks the project generates itself and can grade: the offline default's data.

``arithmetic``: short addition/subtraction questions answered with just the number.
Train and test problems are disjoint (split by a hash of the operands), generation is
deterministic, and grading is an exact match of the first number in the reply.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

SYSTEM = "Reply with only the number."
_NUMBER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str

    def messages(self, with_answer: bool = True) -> list[dict]:
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": self.question}]
        if with_answer:
            msgs.append({"role": "assistant", "content": self.answer})
        return msgs


def _in_test_split(a: int, b: int, op: str) -> bool:
    digest = hashlib.sha256(f"{a}{op}{b}".encode()).digest()
    return digest[0] % 4 == 0  # a quarter of all problems is held out for testing


def problems(split: str, n: int, seed: int = 0, max_operand: int = 50) -> list[Problem]:
    """``n`` problems of ``split`` ("train" or "test"), the same for the same seed."""
    rng = random.Random(f"arithmetic-{split}-{seed}")
    out: list[Problem] = []
    seen = set()
    while len(out) < n:
        a, b = rng.randint(2, max_operand), rng.randint(2, max_operand)
        op = rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        if (a, b, op) in seen or _in_test_split(a, b, op) != (split == "test"):
            continue
        seen.add((a, b, op))
        value = a + b if op == "+" else a - b
        out.append(Problem(f"{a} {op} {b} =", str(value)))
    return out


def grade(reply: str, answer: str) -> bool:
    match = _NUMBER.search(reply.replace(",", ""))
    return bool(match) and match.group(0) == answer


def train_records(n: int, seed: int) -> list[dict]:
    return [{"messages": p.messages()} for p in problems("train", n, seed)]


TASKS = {"arithmetic": {"train": train_records, "test": problems, "grade": grade}}
