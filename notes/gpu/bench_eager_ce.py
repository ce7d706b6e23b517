"""Experiment (not part of the tool): `python bench.py ...` with the loss's cross-entropy left eager, to measure what
compiling it (model.compile_blocks) changes at a given shape, e.g. the 1.5B config's unpacked rows:

    python notes/gpu/bench_eager_ce.py train --model 1.5b --config configs/math_qwen15b.py --hf-steps 0
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import bench  # noqa: E402
import model  # noqa: E402

compile_blocks = model.Transformer.compile_blocks


def compile_blocks_eager_ce(self, *args, **kwargs):
    compile_blocks(self, *args, **kwargs)
    self.chunk_ce = self._chunk_ce


model.Transformer.compile_blocks = compile_blocks_eager_ce
bench.main(sys.argv[1:])
