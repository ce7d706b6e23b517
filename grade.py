"""
Math answer grading for GSM8K and MATH, with no symbolic-math dependency.

    grade(response, answer) -> Grade(correct, formatted, extracted)

Two halves:
1. extract_answer(text): find the final answer in free model text. Strongest marker wins, and within a marker
   the *last* occurrence wins (so a retracted earlier attempt is superseded):
   <answer>..</answer> tags > \\boxed{..}/\\fbox{..} > "#### N" > "(final) answer is/: .." > last number (or
   last $formula$ if it comes after it). The fallback still counts for `correct` but the response is not
   `formatted`. Against a gold list "2, 3", "\\boxed{2} and \\boxed{3}" at the end is read as one answer.
2. is_equiv(pred, gold): normalise the LaTeX/plain text (units, $, %, ^\\circ, \\left, thousands separators..),
   split structure (tuples and intervals are ordered, sets and solution lists are not, matrices cell by cell,
   equations side by side), then compare scalars with our own small recursive-descent parser:
   exact Fraction arithmetic where possible, otherwise complex floats at a few random points for the free
   variables (so 2(x+1) == 2x+2 and \\sqrt8 == 2\\sqrt2 without sympy). Model text is never eval'd.

Decimal vs exact (the one judgement call): a decimal equals an exact value when it is exactly equal (0.5 = 1/2),
or when it has at least 3 significant digits and the exact value rounded half-up to the decimal's number of
places gives exactly that decimal (0.333 = 1/3, 3.14 = \\pi, 0.667 = 2/3; but 0.33 != 1/3, 0.666 != 2/3).

Values at random points are exact Fractions whenever the expression allows (polynomials, radicals of perfect
powers), so "+1" on a huge polynomial is never lost to a float tolerance; only irrational values use REL_TOL.

Every call is bounded: inputs are truncated, parse depth and token counts are capped, exact powers and
factorials are only done when the result is small, and evaluation runs under a step budget and a wall-clock guard.
"""
import cmath
import math
import random
import re
import time
from dataclasses import dataclass
from decimal import Decimal, ROUND_HALF_UP, localcontext
from fractions import Fraction

MAX_RESPONSE_CHARS = 1_000_000  # only the tail of a longer response is searched (final answers live at the end)
MAX_BOX_CHARS = 20_000          # a \\boxed{} longer than this is not an answer
MAX_ANSWER_CHARS = 1_000      # longer "answers" are compared as strings only
MAX_TOKENS = 400
MAX_DEPTH = 60
TIME_BUDGET_S = 0.25          # per is_equiv call, on top of the structural caps
REL_TOL = 1e-9


@dataclass
class Grade:
    correct: bool
    formatted: bool      # the final answer was given in a recognised form (not the last-number fallback)
    extracted: str | None


# -----------------------------------------------------------------------------
# answer extraction

def _find_boxed(text):
    """All (start, end, content) of complete \\boxed{..} / \\fbox{..} / \\boxed 5, the last few only."""
    starts, end = [], len(text)
    while len(starts) < 8:  # the last few boxes only, found from the end: bounded work on adversarial input
        i = max(text.rfind('\\boxed', 0, end), text.rfind('\\fbox', 0, end))
        if i < 0:
            break
        starts.insert(0, i)
        end = i
    out = []
    for m in (re.compile(r'\\(?:boxed|fbox)\s*').match(text, i) for i in starts):
        i = m.end()
        if i < len(text) and text[i] == '{':
            depth = 0
            for j in range(i, min(len(text), i + MAX_BOX_CHARS)):
                if text[j] == '{':
                    depth += 1
                elif text[j] == '}':
                    depth -= 1
                    if depth == 0:
                        out.append((m.start(), j + 1, text[i + 1:j]))
                        break
            # unterminated \boxed{ (a truncated generation) is skipped
        elif m.end() > m.start() + 6:  # "\boxed 5": the token after the space
            t = re.match(r'[^\s$.,;]+', text[i:])
            if t:
                out.append((m.start(), i + t.end(), t.group(0)))
    return out


def _last_boxed(text):
    # only the last box: MATH solutions often box an intermediate result or an equivalent form just before
    boxes = _find_boxed(text)
    return boxes[-1][2] if boxes else None


def _last_boxes_joined(text, n):
    """The last n boxes as one list "a, b", if only "and", commas, $ or spaces separate them; else None."""
    boxes = _find_boxed(text)[-n:]
    if len(boxes) != n or any(not re.fullmatch(r'[\s$,.]*(?:and|or)?[\s$,]*', text[a[1]:b[0]])
                              for a, b in zip(boxes, boxes[1:])):
        return None
    return ', '.join(b[2] for b in boxes)


_MATH_SPAN_RE = re.compile(r'\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|\$([^$\n]+?)\$', re.S)
_NUMBER_RE = re.compile(r'-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+')


def _is_prose(s):
    """Two or more plain words of 3+ letters (outside \\commands): a sentence, not a formula."""
    return len(re.findall(r'(?<![\\a-zA-Z])[a-zA-Z]{3,}', _unwrap_text_commands(s))) >= 2


def _math_spans(text):
    """(end, content) of $..$, $$..$$, \\(..\\), \\[..\\]; an inline $..$ that reads as prose (currency) is skipped."""
    out = []
    for m in _MATH_SPAN_RE.finditer(text):
        content = next(g for g in m.groups() if g is not None).strip()
        if content and not (m.group(4) is not None and _is_prose(content)):
            out.append((m.end(), content))
    return out


def _clip_answer_phrase(s):
    """Text after "the answer is": the math span or the first sentence, reduced to the value it states."""
    s = s.strip().lstrip('*: ').strip()
    spans = _math_spans(s)
    if spans and s.startswith(('$', '\\(', '\\[')):
        return spans[0][1]
    s = s.split('\n')[0]
    s = re.split(r'\.(?:\s|$)|;|\*\*|<', s)[0].strip()  # sentence end; a decimal point is followed by a digit
    # "Final Answer: The volume of $V$ is 120" -> what follows the last "is"
    tail = re.split(r'\bis\b|\bare\b|\bequals\b', s)[-1].strip()
    if tail and not tail.startswith('$') and _math_spans(tail):
        spans = _math_spans(tail)
    elif tail and tail.startswith('$'):
        spans = _math_spans(tail)
    else:
        spans = []
    if spans:
        return spans[-1][1]
    if _is_prose(tail):  # "Jane started growing Sphere 3 hours ago", "4 cookies, not 5": the first number
        nums = _NUMBER_RE.findall(tail)
        return nums[0].rstrip(',') if nums else tail
    return tail


def _last_match(pattern, text):
    """The last match of pattern; the tail is searched first since final answers sit at the end."""
    for window in (20_000, len(text)):
        matches = list(re.finditer(pattern, text[-window:]))
        if matches or window >= len(text):
            return matches[-1] if matches else None
    return None


def _extract(text):
    """-> (answer or None, formatted)."""
    if not text:
        return None, False
    text = text[-MAX_RESPONSE_CHARS:]
    tags = re.findall(r'<answer>(.*?)</answer>', text, re.S | re.I)
    if tags:
        inner = tags[-1]
        boxed = _last_boxed(inner)
        return (boxed if boxed is not None else inner.strip()), True
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed, True
    m = _last_match(r'####\s*([^\n]*)', text)
    if m:
        return m.group(1).strip(), True
    m = _last_match(r'(?i)(?:final answer|the answer|answer)\s*(?:is\b|:)\s*:?', text)
    if m:
        cand = _clip_answer_phrase(m.string[m.end():m.end() + 500])
        if cand:
            return cand, True
    # no marker: the last number, or the last formula if it comes later ("... is $(7, 6)$."), but not
    # the numbers of a closing check ("So x = 3. Checking: 2(3) + 1 = 7.")
    tail = text[-10_000:]
    checks = list(re.finditer(r'(?i)\b(?:let\'s |let me )?(?:check|checking|verify|verifying|verification)\b', tail))
    if checks and _NUMBER_RE.search(tail[:checks[-1].start()]):
        tail = tail[:checks[-1].start()]
    nums = list(_NUMBER_RE.finditer(tail))
    spans = _math_spans(tail)
    if spans and (not nums or spans[-1][0] >= nums[-1].end()):
        return spans[-1][1], False
    if nums:
        return nums[-1].group(0).rstrip(','), False
    return None, False


def extract_answer(text):
    """The final answer given in free text, or None."""
    return _extract(text)[0]


# -----------------------------------------------------------------------------
# normalisation (string level)

_UNICODE = {'\u2212': '-', '\u2013': '-', '\u00d7': '\\times ', '\u00f7': '\\div ', '\u00b7': '\\cdot ',
            '\u221a': '\\sqrt', '\u03c0': '\\pi ', '\u221e': '\\infty ', '\u2264': '\\le ', '\u2265': '\\ge ',
            '\u00b0': '^\\circ', '\u00a0': ' ', '\u2009': ' ', '\u202f': ' ', '\u222a': '\\cup ', '\u00bd': '1/2'}
_DROP = [r'\\displaystyle', r'\\left(?![a-zA-Z])', r'\\right(?![a-zA-Z])', r'\\[bB]igg?[lr]?(?![a-zA-Z])',
         r'\\!', r'\\,', r'\\;', r'\\:', r'(?<!\\)\\ ', r'\\q?quad(?![a-zA-Z])', r'\\limits']


_UNITS = 'zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen ' \
         'seventeen eighteen nineteen'.split()
_TENS = 'twenty thirty forty fifty sixty seventy eighty ninety'.split()
_NUMBER_WORDS = {w: i for i, w in enumerate(_UNITS)}
_NUMBER_WORDS.update({t: 20 + 10 * i for i, t in enumerate(_TENS)})
_NUMBER_WORDS.update({f'{t}{sep}{u}': 20 + 10 * i + j for i, t in enumerate(_TENS) for j, u in enumerate(_UNITS[1:10], 1)
                      for sep in ('-', ' ')})
_NUMBER_WORDS.update({'a hundred': 100, 'one hundred': 100})


def _unwrap_text_commands(s):
    """\\text{abc} -> abc (marked with spaces); returns the string."""
    return re.sub(r'\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}',
                  r' \1 ', s)


def _normalize(s):
    s = s[:MAX_ANSWER_CHARS * 2].strip()
    boxed = _find_boxed(s)
    if len(boxed) == 1 and boxed[0][0] == 0 and boxed[0][1] == len(s):  # a whole "\boxed{..}" answer
        s = boxed[0][2].strip()
    for k, v in _UNICODE.items():
        s = s.replace(k, v)
    s = re.sub(r'^\$+|\$+$', '', s.strip()).strip()
    s = re.sub(r'^\\[(\[]|\\[)\]]$', '', s).strip()
    # LaTeX thousands separators: 4,\!000 and 10{,}000
    s = re.sub(r'(?<=\d)(?:\s*,\s*\\!\s*|\{,\})(?=\d{3})', '', s)
    for pat in _DROP:
        s = re.sub(pat, ' ', s)
    s = re.sub(r'\\[dtc]frac', r'\\frac', s)
    s = re.sub(r'\\[dt]binom', r'\\binom', s)
    s = re.sub(r'\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|\bdegrees?\b', ' ', s)
    s = re.sub(r'\\?%|\bpercent\b', ' ', s)
    s = s.replace('\\$', ' ').replace('$', ' ')
    s = re.sub(r'\\\{\s*\\\}|\\varnothing|\\o\b|\\empty\b', r'\\emptyset', s)
    s = s.replace('\\{', '\\lbrace ').replace('\\}', '\\rbrace ')
    s = re.sub(r'\\(?:leq|le)(?![a-zA-Z])', '<=', s)
    s = re.sub(r'\\(?:geq|ge)(?![a-zA-Z])', '>=', s)
    s = re.sub(r'\\(?:neq|ne)(?![a-zA-Z])', '!=', s)
    s = re.sub(r'^[a-zA-Z]\s*\\in(?![a-zA-Z])', '', s).strip()  # x \in [1,2]
    # R minus a point: \mathbb{R} \setminus \{5\} is (-\infty,5) \cup (5,\infty)
    s = re.sub(r'^\\mathbb\s*\{?R\}?\s*\\(?:setminus|backslash)\s*\\lbrace\s*([^,{}]+?)\s*\\rbrace\s*$',
               r'(-\\infty,\1)\\cup(\1,\\infty)', s)
    whole_text = re.fullmatch(r'\s*\\(?:text|textbf|textnormal|mathrm|mbox)\s*\{([^{}]*)\}\s*\.?', s)
    if whole_text:  # the whole answer is words: \text{Evelyn}, \text{(C)}
        return whole_text.group(1).strip()
    # "1.5 million" is a number, not a unit
    s = re.sub(r'\s*\\?(?:text\s*\{)?\s*\b(hundred|thousand|million|billion|trillion)\b\s*\}?',
               lambda m: ' \\times 10^{%d}' % {'hundred': 2, 'thousand': 3, 'million': 6, 'billion': 9,
                                              'trillion': 12}[m.group(1)], s)
    # \text{ and } / \text{ or } separate solutions; other words inside \text{} are units: drop them
    s = re.sub(r'\\text\s*\{\s*(?:and|or)\s*\}', ',', s)
    s = re.sub(r'\\(?:text|textbf|textnormal|mathrm|mbox)\s*\{\s*[a-zA-Z][a-zA-Z .]*\}(?:\s*\^\s*\{?[23]\}?)?', ' ', s)
    s = _unwrap_text_commands(s)
    s = re.sub(r'\s+(?:and|or)\s+', ', ', s)
    # plain-text units after a value: "18 apples", "5 cm^2" (a word of 2+ letters not preceded by a backslash)
    s = re.sub(r'(?<=[\d}.)\s])\s*(?<!\\)\b(?!(?:sqrt|pi|sin|cos|tan|ln|log|exp|infty)\b)[a-zA-Z]{2,}\.?(?:\s*\^\s*\{?[23]\}?)?'
               r'(?:\s+[a-zA-Z]{2,}\.?)*\s*$', '', s)
    s = re.sub(r'\s*\b[ap]\.?m\.?$', '', s)  # 8:34 p.m.
    s = s.strip().rstrip('.').strip()
    s = re.sub(r'\s+', ' ', s)
    if s.lower() in _NUMBER_WORDS:  # "twenty-five"
        s = str(_NUMBER_WORDS[s.lower()])
    # plain thousands separators, only when the whole answer is one number: 1,000 / 1 000
    if re.fullmatch(r'-?\d{1,3}(?:[, ]\d{3})+(?:\.\d+)?', s):
        s = s.replace(',', '').replace(' ', '')
    return s


# -----------------------------------------------------------------------------
# structure: lists, tuples, intervals, sets, matrices, equations

def _split_top(s, seps):
    """Split s at top-level occurrences of any separator (outside (), [], {})."""
    parts, depth, last, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in '([{':
            depth += 1
        elif c in ')]}':
            depth -= 1
        elif depth == 0:
            for sep in seps:
                if s.startswith(sep, i):
                    parts.append(s[last:i])
                    last = i + len(sep)
                    i = last - 1
                    break
        i += 1
    parts.append(s[last:])
    return [p.strip() for p in parts]


def _outer_bracketed(s):
    """True if s[0] is an opening bracket whose partner is s[-1]."""
    if len(s) < 2 or s[0] not in '([' or s[-1] not in ')]':
        return False
    depth = 0
    for i, c in enumerate(s):
        depth += c in '([{'
        depth -= c in ')]}'
        if depth == 0 and i < len(s) - 1:
            return False
    return True


def _structure(s):
    """Parse normalised text into ('mat', rows) | ('union', parts) | ('seq', open, close, items) |
    ('set', items) | ('list', items) | ('rel', op, lhs, rhs, text) | ('scalar', text)."""
    m = re.fullmatch(r'\\begin\{[pbBvV]?matrix\}(.*)\\end\{[pbBvV]?matrix\}', s, re.S)
    if m:
        rows = [r for r in re.split(r'\\\\', m.group(1)) if r.strip()]
        return ('mat', [[c.strip() for c in r.split('&')] for r in rows])
    parts = _split_top(s, ['\\cup'])
    if len(parts) > 1:
        return ('union', parts)
    if s.startswith('\\lbrace') and s.endswith('\\rbrace'):
        return ('set', [p for p in _split_top(s[7:-7], [',', ';']) if p])
    if _outer_bracketed(s):
        items = _split_top(s[1:-1], [','])
        if len(items) == 1:
            return _structure(items[0]) if s[0] == '(' else ('scalar', s)
        return ('seq', s[0], s[-1], items)
    items = [p for p in _split_top(s, [',', ';']) if p]
    if len(items) > 1:
        return ('list', items)
    if s.count('\\pm') == 1:  # 1 \pm \sqrt2 is the solution list {1+\sqrt2, 1-\sqrt2}
        return ('list', [s.replace('\\pm', '+'), s.replace('\\pm', '-')])
    for op in ['<=', '>=', '!=', '=', '<', '>']:
        sides = _split_top(s, [op])
        if len(sides) >= 2 and all(sides):
            return ('rel', op, sides[0], sides[-1], s)
    return ('scalar', s)


def _strip_var_eq(st):
    """x = 5 -> 5 (when the gold is a bare value). The last right-hand side counts: k = 2+3 = 5 -> 5."""
    if st[0] == 'rel' and st[1] == '=':
        return ('scalar', st[3])
    return st


def _unordered_eq(a, b, eq):
    if len(a) != len(b):
        return False
    left = list(b)
    rest = []
    for x in a:  # identical items first, so long equal lists stay cheap
        if x in left:
            left.remove(x)
        else:
            rest.append(x)
    for x in rest:
        for j, y in enumerate(left):
            if eq(x, y):
                del left[j]
                break
        else:
            return False
    return True


def _as_interval(st):
    """1 <= x < 2 -> ('seq', '[', ')', ['1', '2']); x > 5 -> (5, \\infty); else st unchanged."""
    if st[0] != 'rel' or st[1] not in ('<', '<=', '>', '>='):
        return st
    parts = [x.strip() for x in re.split(r'(<=|>=|<|>)', st[4])]
    if len(parts) == 5 and parts[1][0] == parts[3][0]:  # a < x <= b, or b > x > a
        lo, op1, _, op2, hi = parts if parts[1][0] == '<' else parts[::-1]
        if parts[1][0] == '>':
            op1, op2 = {'>': '<', '>=': '<='}[parts[3]], {'>': '<', '>=': '<='}[parts[1]]
        return ('seq', '[' if op1 == '<=' else '(', ']' if op2 == '<=' else ')', [lo, hi])
    if len(parts) == 3:
        a, op, b = parts
        if re.fullmatch(r'[a-zA-Z]', b):  # 5 < x is x > 5
            a, b, op = b, a, {'<': '>', '<=': '>=', '>': '<', '>=': '<='}[op]
        if not re.fullmatch(r'[a-zA-Z]', a):
            return st
        if op in ('>', '>='):
            return ('seq', '[' if op == '>=' else '(', ')', [b, '\\infty'])
        return ('seq', '(', ']' if op == '<=' else ')', ['-\\infty', b])
    return st


def _struct_equiv(p, g, ctx):
    if g[0] in ('seq', 'union') or p[0] in ('seq', 'union'):
        p, g = _as_interval(p), _as_interval(g)
    # a column or row vector against a tuple: compare the entries
    for a, b in ((p, g), (g, p)):
        if a[0] == 'mat' and b[0] == 'seq' and b[1] == '(' and (len(a[1]) == 1 or all(len(r) == 1 for r in a[1])):
            entries = [c for r in a[1] for c in r]
            a = ('seq', '(', ')', entries)
            p, g = (a, b) if p[0] == 'mat' else (b, a)
    kp, kg = p[0], g[0]
    if kg in ('list', 'set', 'union', 'seq'):
        if kp == 'rel' or kp == 'scalar':
            p = _strip_var_eq(p)
        if kg in ('list', 'set') and kp in ('list', 'set'):
            items_p = [_structure(x) for x in p[1]]  # x = 2 items are reduced against a bare gold item
            items_g = [_structure(x) for x in g[1]]
            return _unordered_eq(items_p, items_g, lambda a, b: _struct_equiv(a, b, ctx))
        if kg == 'union' and kp == 'union':
            return _unordered_eq([_structure(x) for x in p[1]], [_structure(x) for x in g[1]],
                                 lambda a, b: _struct_equiv(a, b, ctx))
        if kg == 'seq' and kp == 'seq':
            return (p[1] == g[1] and p[2] == g[2] and len(p[3]) == len(g[3])
                    and all(_struct_equiv(_structure(a), _structure(b), ctx) for a, b in zip(p[3], g[3])))
        return False
    if kg == 'mat':
        return (kp == 'mat' and len(p[1]) == len(g[1])
                and all(len(rp) == len(rg) and all(_scalar_equiv(a, b, ctx) for a, b in zip(rp, rg))
                        for rp, rg in zip(p[1], g[1])))
    if kg == 'rel':
        if kp == 'rel':
            if p[1] == g[1] and _scalar_equiv(p[2], g[2], ctx) and _scalar_equiv(p[3], g[3], ctx):
                return True
            flip = {'<': '>', '>': '<', '<=': '>=', '>=': '<=', '=': '=', '!=': '!='}
            if flip[p[1]] == g[1] and _scalar_equiv(p[3], g[2], ctx) and _scalar_equiv(p[2], g[3], ctx):
                return True
            if p[1] == g[1] == '=':  # same equation up to a non-zero factor: y=2x+3 vs 2x-y+3=0
                return _proportional(f'({p[2]})-({p[3]})', f'({g[2]})-({g[3]})', ctx)
            return False
        # a bare value against "y = 2x+3": compare with the right-hand side when the left is a single symbol
        if g[1] == '=' and re.fullmatch(r'[a-zA-Z](?:_\{?\w+\}?)?|\\[a-zA-Z]+', g[2]) and kp == 'scalar':
            return _scalar_equiv(p[1], g[3], ctx)
        return False
    # gold is a scalar
    p = _strip_var_eq(p)
    if p[0] != 'scalar':
        return False
    return _scalar_equiv(p[1], g[1], ctx)


# -----------------------------------------------------------------------------
# a small LaTeX / plain-math expression parser

class _Fail(Exception):
    pass


_TOKEN_RE = re.compile(r'\s*(?:(?P<num>\d+\.?\d*(?:[eE][+-]?\d+(?![\d.]))?|\.\d+)'
                       r'|(?P<cmd>\\[a-zA-Z]+)|(?P<word>[a-zA-Z]+)|(?P<op><=|>=|!=|\*\*|[-+*/^()\[\]{}!|_,=<>]))')
_FUNCS = {'sin', 'cos', 'tan', 'cot', 'sec', 'csc', 'arcsin', 'arccos', 'arctan', 'sinh', 'cosh', 'tanh',
          'ln', 'log', 'exp'}
_GREEK = {'alpha', 'beta', 'gamma', 'delta', 'epsilon', 'varepsilon', 'zeta', 'eta', 'theta', 'vartheta', 'iota',
          'kappa', 'lambda', 'mu', 'nu', 'xi', 'rho', 'sigma', 'tau', 'upsilon', 'phi', 'varphi', 'chi', 'psi',
          'omega', 'Gamma', 'Delta', 'Theta', 'Lambda', 'Xi', 'Sigma', 'Phi', 'Psi', 'Omega'}


def _tokenize(s):
    toks, i = [], 0
    s = s.strip()
    while i < len(s):
        m = _TOKEN_RE.match(s, i)
        if not m or m.end() == i:
            raise _Fail(f'bad char {s[i]!r}')
        i = m.end()
        kind = m.lastgroup
        t = m.group(kind)
        if kind == 'word':
            if t in _FUNCS or t in ('sqrt', 'pi', 'infty'):
                toks.append(('cmd', '\\' + t))
            elif len(t) >= 3:
                raise _Fail('a word is text, not a product of variables')
            else:
                toks.extend(('var', c) for c in t)  # xy is x*y
        else:
            toks.append((kind, t))
        if len(toks) > MAX_TOKENS:
            raise _Fail('too long')
    return toks


class _Parser:
    # grammar: expr := term {(+|-) term}; term := unary {(*|/|implicit) unary}; unary := (-|+) unary | power;
    # power := postfix [^ unary]; postfix := atom {!}; atom := number | var | (expr) | {expr} | \frac.. | \sqrt..
    def __init__(self, toks):
        self.toks, self.i, self.depth = toks, 0, 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self, val=None):
        k, v = self.peek()
        if k is None or (val is not None and v != val):
            raise _Fail(f'expected {val}')
        self.i += 1
        return k, v

    def enter(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Fail('too deep')

    def parse(self):
        e = self.expr()
        if self.i != len(self.toks):
            raise _Fail(f'trailing {self.peek()[1]!r}')
        return e

    def expr(self):
        self.enter()
        e = self.term()
        while self.peek()[1] in ('+', '-'):
            op = self.take()[1]
            r = self.term()
            e = ('add', e, r) if op == '+' else ('add', e, ('neg', r))
        self.depth -= 1
        return e

    def starts_atom(self):
        k, v = self.peek()
        return k in ('num', 'var') or v in ('(', '{') or (k == 'cmd' and v not in (
            '\\cdot', '\\times', '\\div', '\\pm', '\\mp', '\\cup', '\\lbrace', '\\rbrace'))

    def term(self):
        e = self.unary()
        while True:
            v = self.peek()[1]
            if v in ('*', '\\cdot', '\\times'):
                self.take()
                e = ('mul', e, self.unary())
            elif v in ('/', '\\div'):
                self.take()
                e = ('div', e, self.unary())
            elif self.starts_atom():
                # a mixed number 6\frac{3}{4} means 6 + 3/4, not 6 * 3/4
                if e[0] == 'num' and e[2] is False and self.peek()[1] == '\\frac':
                    f = self.power()
                    if f[0] == 'div' and f[1][0] == 'num' and f[2][0] == 'num':
                        e = ('add', e, f)
                        continue
                    e = ('mul', e, f)
                else:
                    e = ('mul', e, self.power())
            else:
                return e

    def unary(self):
        if self.peek()[1] in ('-', '+'):
            self.enter()
            op = self.take()[1]
            u = self.unary()
            self.depth -= 1
            return ('neg', u) if op == '-' else u
        return self.power()

    def power(self):
        self.enter()
        base = self.postfix()
        if self.peek()[1] in ('^', '**'):
            self.take()
            base = ('pow', base, self.group() if self.peek()[1] == '{' else self.unary())
        self.depth -= 1
        return base

    def postfix(self):
        e = self.atom()
        while self.peek()[1] == '!':
            self.take()
            e = ('fact', e)
        return e

    def group(self):
        self.take('{')
        e = self.expr()
        self.take('}')
        return e

    def subscript(self):
        """The text of a subscript, _2 or _{n+1}, as part of a symbol's name."""
        if self.peek()[1] != '{':
            return self.take()[1]
        self.take('{')
        parts = []
        while self.peek()[1] != '}':
            parts.append(self.take()[1])
        self.take('}')
        return ''.join(parts)

    def arg(self):
        """A LaTeX macro argument: {..} or a single token (\\frac12 is \\frac{1}{2})."""
        k, v = self.peek()
        if v == '{':
            return self.group()
        if k == 'num' and len(v) > 1 and v.isdigit():
            self.toks[self.i] = ('num', v[1:])  # leave the remaining digits for the caller
            return ('num', Fraction(int(v[0])), False)
        return self.atom()

    def atom(self):
        self.enter()
        k, v = self.take()
        if k == 'num':
            if len(v) > 400 or ('e' in v.lower() and abs(int(re.split('[eE]', v)[1])) > 400):
                raise _Fail('number too large to be an answer')  # keeps Fraction('1e999999999') from hanging
            e = ('num', Fraction(v), '.' in v or 'e' in v.lower())
            if self.peek()[1] == '_':  # 1011_2: a numeral in another base is a symbol, not a value
                self.take()
                e = ('var', f'{v}_{self.subscript()}')
        elif k == 'var':
            e = ('const', v) if v in ('i', 'e') else ('var', v)  # the imaginary unit and Euler's number
            if self.peek()[1] == '_':
                self.take()
                e = ('var', f'{v}_{self.subscript()}')
        elif v in ('(', '['):
            e = self.expr()
            self.take(')' if v == '(' else ']')
        elif v == '{':
            e = self.expr()
            self.take('}')
        elif v == '|':
            e = ('abs', self.expr())
            self.take('|')
        elif v == '\\frac':
            num = self.arg()
            e = ('div', num, self.arg())
        elif v == '\\binom':
            n = self.arg()
            e = ('binom', n, self.arg())
        elif v == '\\sqrt':
            n = ('num', Fraction(2), False)
            if self.peek()[1] == '[':
                self.take()
                n = self.expr()
                self.take(']')
            e = ('root', self.arg(), n)
        elif v == '\\pi':
            e = ('const', 'pi')
        elif v == '\\infty':
            e = ('const', 'inf')
        elif v[1:] in _GREEK:
            e = ('var', v)
        elif v[1:] in _FUNCS:
            name, power = v[1:], None
            if name == 'log' and self.peek()[1] == '_':
                self.take()
                base = self.arg()
                self.depth -= 1
                return ('div', ('fn', 'ln', self.fn_arg()), ('fn', 'ln', base))
            if self.peek()[1] == '^':  # \sin^2 x
                self.take()
                power = self.arg()
            e = ('fn', name, self.fn_arg())
            if power is not None:
                e = ('pow', e, power)
        else:
            raise _Fail(f'unknown token {v!r}')
        self.depth -= 1
        return e

    def fn_arg(self):
        if self.peek()[1] in ('(', '{'):
            return self.atom()
        e = self.power()  # \sin 2x is sin(2x)
        while self.peek()[0] in ('num', 'var') or self.peek()[1] == '\\pi':
            e = ('mul', e, self.power())
        return e


def _parse(s):
    try:
        return _Parser(_tokenize(s)).parse()
    except (_Fail, ValueError, ZeroDivisionError):
        return None


# -----------------------------------------------------------------------------
# evaluation: exact Fractions when possible, complex floats otherwise

class _Budget:
    def __init__(self, seconds):
        self.deadline = time.monotonic() + seconds
        self.steps = 0

    def tick(self):
        self.steps += 1
        if self.steps % 256 == 0:
            self.check()

    def check(self):
        if time.monotonic() > self.deadline:
            raise _Fail('time')


def _exact_root(x, n):
    """Exact n-th root of a non-negative Fraction, or None."""
    if x < 0 or n < 1 or n > 64 or x.numerator.bit_length() > 4000 or x.denominator.bit_length() > 4000:
        return None
    out = []
    for v in (x.numerator, x.denominator):
        if n == 2:
            r = math.isqrt(v)  # exact for any size, so \sqrt{10^{200}} = 10^{100} exactly
        elif v.bit_length() < 1000:
            r = round(v ** (1.0 / n))
        else:
            return None
        for c in (r - 1, r, r + 1):
            if c >= 0 and c ** n == v:
                out.append(c)
                break
        else:
            return None
    return Fraction(out[0], out[1])


def _c(x):
    return complex(x) if not isinstance(x, complex) else x


def _eval(e, env, budget):
    budget.tick()
    k = e[0]
    if k == 'num':
        return e[1]
    if k == 'var':
        if e[1] not in env:
            raise _Fail('free variable')
        return env[e[1]]
    if k == 'const':
        return {'pi': complex(math.pi), 'i': 1j, 'e': complex(math.e), 'inf': complex(math.inf)}[e[1]]
    if k == 'neg':
        return -_eval(e[1], env, budget)
    if k == 'abs':
        v = _eval(e[1], env, budget)
        return abs(v) if isinstance(v, Fraction) else complex(abs(v))
    if k == 'fact':
        v = _eval(e[1], env, budget)
        if isinstance(v, Fraction) and v.denominator == 1 and 0 <= v <= 3000:
            return Fraction(math.factorial(int(v)))
        if isinstance(v, Fraction) and v.denominator == 1 and v > 3000:
            raise _Fail('too large')  # 9999! is only equal to a string match of itself
        vc = _c(v)
        if abs(vc.imag) > 1e-12 or vc.real < 0 or vc.real > 170:
            raise _Fail('factorial')
        return complex(math.gamma(vc.real + 1))
    if k == 'binom':
        n, r = _eval(e[1], env, budget), _eval(e[2], env, budget)
        if all(isinstance(x, Fraction) and x.denominator == 1 for x in (n, r)) and 0 <= r <= n <= 2000:
            return Fraction(math.comb(int(n), int(r)))
        raise _Fail('binom')
    if k == 'fn':
        f = {'sin': cmath.sin, 'cos': cmath.cos, 'tan': cmath.tan, 'cot': lambda z: 1 / cmath.tan(z),
             'sec': lambda z: 1 / cmath.cos(z), 'csc': lambda z: 1 / cmath.sin(z), 'arcsin': cmath.asin,
             'arccos': cmath.acos, 'arctan': cmath.atan, 'sinh': cmath.sinh, 'cosh': cmath.cosh,
             'tanh': cmath.tanh, 'ln': cmath.log, 'log': cmath.log10, 'exp': cmath.exp}[e[1]]
        z = _c(_eval(e[2], env, budget))
        if abs(z) > 1e6:
            raise _Fail('huge argument')
        return f(z)
    a = _eval(e[1], env, budget)
    b = _eval(e[2], env, budget)
    both = isinstance(a, Fraction) and isinstance(b, Fraction)
    if k == 'add':
        return a + b if both else _c(a) + _c(b)
    if k == 'mul':
        return a * b if both else _c(a) * _c(b)
    if k == 'div':
        if b == 0:
            raise _Fail('division by zero')
        return a / b if both else _c(a) / _c(b)
    if k == 'root':  # e = ('root', radicand, index)
        if both and b.denominator == 1:
            r = _exact_root(a, int(b))
            if r is not None:
                return r
            if a < 0 and b % 2 == 1:  # real odd root of a negative number
                r = _exact_root(-a, int(b))
                return -r if r is not None else complex(-(float(-a) ** (1 / float(b))))
        if b == 0:
            raise _Fail('zeroth root')
        return _c(a) ** (1 / _c(b)) if not (both and b == 2) else cmath.sqrt(_c(a))
    if k == 'pow':
        if both and b.denominator == 1:
            n = int(b) if abs(b) < 10 ** 6 else None
            size = max(a.numerator.bit_length(), a.denominator.bit_length())
            if n is not None and size * abs(n) <= 20_000 and not (a == 0 and n < 0):
                return a ** n
        if both and a >= 0 and b.denominator <= 64 and abs(b.numerator) <= 64:
            r = _exact_root(a, b.denominator)  # 8^{2/3} = 4 exactly
            if r is not None and (r != 0 or b > 0):
                return r ** b.numerator
        try:
            za, zb = _c(a), _c(b)
            if za == 0:
                if zb.real > 0:
                    return 0j
                raise _Fail('0^neg')
            if abs(zb) * max(1.0, abs(cmath.log(za))) > 700:  # would overflow: not comparable as a float
                raise _Fail('too large')
            return za ** zb
        except (OverflowError, ZeroDivisionError, ValueError):
            raise _Fail('too large')
    raise _Fail(f'unknown node {k}')


def _vars(e, out):
    if e[0] == 'var':
        out.add(e[1])
    elif e[0] not in ('num', 'const'):
        for x in e[1:]:
            if isinstance(x, tuple):
                _vars(x, out)
    return out


def _finite(z):
    return isinstance(z, Fraction) or (math.isfinite(z.real) and math.isfinite(z.imag))


def _close(a, b):
    if isinstance(a, Fraction) and isinstance(b, Fraction):
        return a == b  # exact values are compared exactly: 7z^{96}(4z+1) + 1 is not 7z^{96}(4z+1)
    a, b = _c(a), _c(b)
    return abs(a - b) <= REL_TOL * max(1.0, abs(a), abs(b))


def _decimal_matches(lit, value):
    """Does the decimal literal `lit` (e.g. '-0.333') stand for `value` (Fraction or complex)?"""
    d = Decimal(lit)
    digits = d.as_tuple().digits
    sig = len(str(int(''.join(map(str, digits))))) if any(digits) else 0
    if sig < 3:
        return False
    places = -d.as_tuple().exponent if d.as_tuple().exponent < 0 else 0
    with localcontext() as ctx:
        ctx.prec = min(places + 60, 3000)  # enough digits that the rounding below is exact
        if isinstance(value, Fraction):
            v = Decimal(value.numerator) / Decimal(value.denominator)
        else:
            if abs(value.imag) > 1e-12 or not math.isfinite(value.real):
                return False
            v = Decimal(repr(value.real))
            if places > 12:  # a float only carries ~15 digits: compare 3.14159265358979323846 to pi at 12 places
                q = Decimal(1).scaleb(-12)
                return v.quantize(q, rounding=ROUND_HALF_UP) == d.quantize(q, rounding=ROUND_HALF_UP)
        return v.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP) == d


def _points(names, n, seed):
    rng = random.Random(seed)
    # random reals away from 0 and small integers, so accidental coincidences (x^2 = x) are unlikely
    return [{v: Fraction(rng.randint(1000, 3000), 1000) * (1 if rng.random() < 0.7 else -1) for v in names}
            for _ in range(n)]


_INF_TEXT = {'\\infty': '+inf', '+\\infty': '+inf', '-\\infty': '-inf', 'infty': '+inf', 'inf': '+inf'}


def _canon_text(s):
    s = _unwrap_text_commands(s).lower()
    return re.sub(r'[\s{}\\.]|text|mathrm|mbox', '', s)


def _scalar_equiv(p, g, ctx):
    ctx.check()  # many items (long lists, big matrices) share one time budget
    if p == g:
        return True
    if p.replace(' ', '') == g.replace(' ', ''):
        return True
    if p.strip() in _INF_TEXT or g.strip() in _INF_TEXT:
        return _INF_TEXT.get(p.strip()) == _INF_TEXT.get(g.strip()) is not None
    # multiple choice: gold "(C)" or "C" vs "C", "(c)", "C)"
    mg = re.fullmatch(r'\(?([A-E])\)?', g.strip())
    if mg:
        mp = re.fullmatch(r'\(?([A-Ea-e])\)?', p.strip())
        return bool(mp) and mp.group(1).upper() == mg.group(1)
    if len(p) > MAX_ANSWER_CHARS or len(g) > MAX_ANSWER_CHARS:
        return False
    tp, tg = _parse(p), _parse(g)
    if tp is None or tg is None:
        return _canon_text(p) == _canon_text(g) != ''
    names = _vars(tp, set()) | _vars(tg, set())
    budget = ctx
    if not names:
        try:
            vp, vg = _eval(tp, {}, budget), _eval(tg, {}, budget)
        except _Fail as err:
            if str(err) == 'time':
                raise
            return False
        if not (_finite(vp) and _finite(vg)):
            return False
        if isinstance(vp, Fraction) and isinstance(vg, Fraction) and vp == vg:
            return True
        # a decimal literal against an exact value: the rounding rule
        lp = re.fullmatch(r'-?(?:\d+\.\d*|\.\d+)', p.replace(' ', ''))
        lg = re.fullmatch(r'-?(?:\d+\.\d*|\.\d+)', g.replace(' ', ''))
        if lp and not lg:
            return _decimal_matches(lp.group(0), vg)
        if lg and not lp:
            return _decimal_matches(lg.group(0), vp)
        if lp and lg:
            return False  # two different decimals
        if isinstance(vp, Fraction) and isinstance(vg, Fraction):
            return False
        return _close(vp, vg)
    # free variables: compare at random points; both sides must use the same symbols
    if _vars(tp, set()) != _vars(tg, set()):
        return False
    ok = 0
    for env in _points(sorted(names), 6, seed=1234):
        try:
            vp, vg = _eval(tp, env, budget), _eval(tg, env, budget)
        except _Fail as err:
            if str(err) == 'time':
                raise
            continue
        if not (_finite(vp) and _finite(vg)):
            continue
        if not _close(vp, vg):
            return False
        ok += 1
    return ok >= 3


def _proportional(p, g, ctx):
    """Are the expressions p and g non-zero constant multiples of each other (as equations p=0, g=0)?"""
    tp, tg = _parse(p), _parse(g)
    if tp is None or tg is None:
        return False
    names = sorted(_vars(tp, set()) | _vars(tg, set()))
    if _vars(tp, set()) != _vars(tg, set()) or not names:
        return False
    ratio, ok = None, 0
    for env in _points(names, 6, seed=99):
        try:
            vp, vg = _eval(tp, env, ctx), _eval(tg, env, ctx)
        except _Fail:
            continue
        if not (_finite(vp) and _finite(vg)) or abs(vg) < 1e-12:
            continue
        r = vp / vg if isinstance(vp, Fraction) and isinstance(vg, Fraction) else _c(vp) / _c(vg)
        if ratio is None:
            ratio = r
        elif not _close(r, ratio):
            return False
        ok += 1
    return ok >= 3 and ratio is not None and abs(ratio) > 1e-12


# -----------------------------------------------------------------------------
# public API

def is_equiv(pred, gold):
    """Is the extracted answer `pred` mathematically the same answer as the gold answer `gold`?"""
    if pred is None or gold is None:
        return False
    p, g = _normalize(str(pred)), _normalize(str(gold))
    if not p or not g:
        return False
    if p == g:
        return True
    try:
        return _struct_equiv(_structure(p), _structure(g), _Budget(TIME_BUDGET_S))
    except (_Fail, RecursionError, OverflowError, ValueError, ZeroDivisionError, ArithmeticError):
        return False


def grade(response, answer, truncated=False):
    """Grade one model response against the dataset's gold answer (GSM8K number or MATH LaTeX; an int, float or
    Fraction is taken as its decimal text). truncated=True: the response was cut off at the token limit, so an
    unmarked number in it is not an answer (the last-number fallback is off); a marked one (\\boxed{}, ####,
    "the answer is") still counts. No gold (None) grades as not correct."""
    if answer is None:
        extracted, formatted = _extract(response or '')
        return Grade(correct=False, formatted=formatted, extracted=extracted)
    if isinstance(answer, (int, float, Fraction)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str):
        raise TypeError(f"grade: the gold answer must be a string or a number, got {type(answer).__name__}")
    gold = answer
    if '####' in gold:
        gold = _after_hashes(gold)
    elif '\\boxed' in gold or '\\fbox' in gold:
        gold = _last_boxed(gold) or gold
    extracted, formatted = _extract(response or '')
    if truncated and not formatted:
        extracted = None  # a number that happens to be last in a cut-off text is not the model's answer
    correct = is_equiv(extracted, gold)
    if not correct and extracted is not None and response:
        # "the roots are \boxed{2} and \boxed{3}" against a gold list "2, 3": join the last boxes
        n_gold = len(_split_top(_normalize(gold), [',']))
        joined = _last_boxes_joined(response[-MAX_RESPONSE_CHARS:], n_gold) if n_gold > 1 else None
        if joined is not None and is_equiv(joined, gold):
            correct, extracted = True, joined
    return Grade(correct=correct, formatted=formatted, extracted=extracted)


def _after_hashes(text):
    # the one GSM8K answer parser: the number after the last '####', thousands separators removed
    return text.split('####')[-1].strip().replace(',', '')


def gsm8k_gold(row):
    """The number after '####' in a GSM8K row's answer, thousands separators removed."""
    if '####' not in row['answer']:
        raise ValueError(f"GSM8K row has no '####' in its answer: {row['answer'][-80:]!r}")
    return _after_hashes(row['answer'])


def math_gold(row):
    """The content of the last \\boxed{} in a MATH row's solution."""
    boxed = _last_boxed(row['solution'])
    if boxed is None:
        raise ValueError(f"MATH row {row.get('unique_id', '?')} has no \\boxed{{}} in its solution")
    return boxed
