"""A store for the judging browser tests: two SYNTHETIC runs (tests/app/synthetic.py) with eval
samples at steps 0, 10 and 20 (4 prompts x 2 seeds), named with markers a blinding test can
look for, and every eval PNG given a tEXt chunk naming its run and step (what a leaky image
would carry); and the stored experiment of tests/experiment_data.py. Prints the two run ids,
then the experiment id."""

from __future__ import annotations

import struct
import zlib

RUN_NAMES = ("zebra-marker-flow", "yak-marker-guard")


def png_with_text(data: bytes, text: str) -> bytes:
    """``data`` (a PNG) with a tEXt chunk ``Comment: text`` after its IHDR."""
    body = b"Comment\x00" + text.encode("latin-1")
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF)
    ihdr_end = 8 + 12 + struct.unpack(">I", data[8:12])[0]
    return data[:ihdr_end] + chunk + data[ihdr_end:]


def build() -> tuple[int, int, int]:
    from grpo_guard.store import artifacts, queries
    from tests.app.synthetic import make_run

    ids = (make_run("flow_grpo", 21, name=RUN_NAMES[0], eval_every=10, ckpt_every=100),
           make_run("grpo_guard", 21, name=RUN_NAMES[1], eval_every=10, ckpt_every=100))
    for rid in ids:
        for s in queries.samples_for(rid):
            path = artifacts.resolve(s.image_location)
            with open(path, "rb") as fh:
                data = fh.read()
            with open(path, "wb") as fh:
                fh.write(png_with_text(data, f"{queries.get_run(rid).name} {s.image_location} step {s.step}"))
    from tests.experiment_data import stored_experiment

    return (*ids, stored_experiment())  # an experiment, for its Judge button and per-arm human series


if __name__ == "__main__":
    from grpo_guard.store import db

    db.upgrade()
    print(*build())
