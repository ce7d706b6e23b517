"""
Report card for grade.py, over everything it can be checked against without a model:
1. agreement with the labelled suite in tests/grade_cases.py (and every disagreement),
2. self-consistency: every MATH train+test solution against its gold, every GSM8K train+test answer against its
   '####' number (single core, timed),
3. false positives: each MATH gold answer against another problem's gold answer,
4. mechanical rewrites of every MATH gold answer (x = 5, 5.0, a/b, \\left(..\\right), +1, 2(..)),
5. worst-case time of one grade() call over the adversarial inputs of tests/test_grade.py.
Run: python check_grader.py
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(ROOT, 'tests'))
from data import read_jsonl  # noqa: E402
from grade import _normalize, grade, gsm8k_gold, is_equiv  # noqa: E402
from grade_cases import CASES  # noqa: E402


def rows(path):
    return read_jsonl(os.path.join(ROOT, path))


# 1. labelled suite
bad = []
for mode, text, gold, expected, source in CASES:
    got = is_equiv(text, gold) if mode == 'eq' else grade(text, gold).correct
    if int(got) != expected:
        bad.append((mode, text[:100], gold, expected, source))
n0 = sum(c[3] == 0 for c in CASES)
print(f'labelled suite: {len(CASES)} cases, {n0} near-misses, agreement {1 - len(bad) / len(CASES):.4f}')
for b in bad:
    print('  disagreement:', b)

# 2. self-consistency
t0 = time.time()
failures, n = [], 0
for split in ('train', 'test'):
    for r in rows(f'data/math/{split}.jsonl'):
        n += 1
        if not grade(r['solution'], r['answer']).correct:
            failures.append((r['unique_id'], r['answer']))
    for i, r in enumerate(rows(f'data/gsm8k/{split}.jsonl')):
        n += 1
        if not grade(r['answer'], gsm8k_gold(r)).correct:
            failures.append((f'gsm8k/{split}:{i}', gsm8k_gold(r)))
print(f'self-consistency: {n - len(failures)}/{n} = {1 - len(failures) / n:.5f} in {time.time() - t0:.1f}s')
for f in failures:
    print('  exception:', f)

# 3. false positives between different gold answers (a fixed permutation of all MATH answers)
t0 = time.time()
ans = [r['answer'] for split in ('train', 'test') for r in rows(f'data/math/{split}.jsonl')]
accepted, compared = [], 0
for i, a in enumerate(ans):
    b = ans[(i * 7919 + 13) % len(ans)]
    if _normalize(a) != _normalize(b):
        compared += 1
        if is_equiv(a, b):
            accepted.append((a, b))
print(f'cross-problem pairs with different gold strings: {compared}, accepted {len(accepted)} '
      f'(each should be the same answer written differently) in {time.time() - t0:.1f}s')
for a in accepted:
    print('  accepted:', a)

# 4. mechanical rewrites of every MATH gold answer (equivalent ones must pass, perturbed ones must fail)
from test_grade import ADVERSARIAL, GOLDS, rewrites  # noqa: E402
t0 = time.time()
wrong, total = [], 0
for a in ans:
    if not a:
        continue
    for text, want in rewrites(a):
        total += 1
        if is_equiv(text, a) != want:
            wrong.append((text, a, want))
print(f'rewrites of MATH gold answers: {total - len(wrong)}/{total} judged as intended in {time.time() - t0:.1f}s')
for w in wrong:
    print('  wrong:', w)

# 5. adversarial timing
worst = (0.0, None)
for name, text in ADVERSARIAL.items():
    for gold in GOLDS:
        t0 = time.perf_counter()
        grade(text, gold)
        worst = max(worst, (time.perf_counter() - t0, name))
print(f'adversarial: {len(ADVERSARIAL)} inputs x {len(GOLDS)} golds, slowest call {worst[0] * 1000:.0f} ms ({worst[1]})')
