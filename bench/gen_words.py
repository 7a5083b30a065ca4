#!/usr/bin/env python3
"""Writes a word-count input with many distinct words: DIR/words.txt.

The built-in wordcount generator (spate run wordcount --size) draws from a
vocabulary of 8192 words; this one draws --size bytes of words uniformly
from --distinct made-up words (default 200 MB from 4M), so that the map-side
combine's hash table holds millions of keys, the case bench/bench_aggregate.cc
measures in isolation. Words are 3 to 12 lowercase letters (the word's id in
base 26, a 'q', then random letters), separated by spaces, a newline every 12
words. Deterministic for --seed.

    python3 bench/gen_words.py --out /tmp/words4m --size 200m --distinct 4m
    build/spate run wordcount --input /tmp/words4m --executors 2 --json run.json
"""
import argparse
import os
import random


def parse_size(text):
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def parse_count(text):
    units = {"k": 10**3, "m": 10**6}
    text = text.strip().lower()
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def vocabulary(distinct, rng):
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = []
    for i in range(distinct):
        word = []
        n = i
        while True:
            word.append(letters[n % 26])
            n //= 26
            if n == 0:
                break
        word.append("q")  # ends the id, so that words are distinct
        length = rng.randint(3, 12)
        while len(word) < length:
            word.append(rng.choice(letters))
        words.append("".join(word))
    return words


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory to create (words.txt goes in it)")
    ap.add_argument("--size", default="200m", help="bytes of text (k, m, g suffixes)")
    ap.add_argument("--distinct", default="4m", help="vocabulary size (k, m suffixes)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    size, distinct = parse_size(args.size), parse_count(args.distinct)
    if size <= 0 or distinct <= 0:
        ap.error("--size and --distinct must be positive")
    rng = random.Random(args.seed)
    words = vocabulary(distinct, rng)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "words.txt")
    written = 0
    with open(path + ".tmp", "w", encoding="ascii") as f:
        while written < size:
            lines = []
            for _ in range(4096):
                lines.append(" ".join(rng.choices(words, k=12)))
            block = "\n".join(lines) + "\n"
            if written + len(block) > size:
                block = block[: size - written]
                block = block[: block.rfind(" ") + 1] or block  # end on a separator
            f.write(block)
            written += len(block)
    os.rename(path + ".tmp", path)
    print(f"{path}: {written} bytes, words drawn from {distinct} distinct")


if __name__ == "__main__":
    main()
