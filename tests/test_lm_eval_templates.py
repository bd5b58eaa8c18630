"""regress compiles each lm-eval prompt template once (``runner._cache_lm_eval_templates``).

lm-eval's own ``apply_template`` compiles the Jinja source for every document; regress
swaps in a version that caches the compiled template. The text must not change.
"""

from __future__ import annotations

import jinja2
import pytest
from jinja2 import Environment

from harness.runner import _cache_lm_eval_templates

DOCS = [{"q": "12+7", "a": 19, "xs": [3, 1, 2]}, {"q": "é ü\n<tag>", "a": 0, "xs": []}]
TEMPLATES = [
    "Q: {{q}}\nA:",
    "{{a}}",
    "{{ xs | join(',') }}|{{ q | regex_replace('[0-9]', '#') }}",
    "{% if a %}yes{% else %}no{% endif %} {{ q }}\n",
]


def test_cached_templates_render_what_lm_eval_renders(monkeypatch):
    import lm_eval.utils as U

    original = getattr(U.apply_template, "__wrapped__", U.apply_template)  # lm-eval's, even if swapped already
    want = [original(t, d) for t in TEMPLATES for d in DOCS]
    compiles = []
    real_compile = Environment.compile

    def counting(self, *a, **k):
        compiles.append(a[0] if a else k.get("source"))
        return real_compile(self, *a, **k)

    monkeypatch.setattr(U, "apply_template", original)  # restored after the test
    monkeypatch.setattr(Environment, "compile", counting)
    _cache_lm_eval_templates()
    _cache_lm_eval_templates()  # idempotent: wraps once
    cached = U.apply_template
    assert cached is not original
    # not in the cache from other tests; marked at the start, so trailing newlines stay trailing
    unique = [f"{{# {id(compiles)} #}}{t}" for t in TEMPLATES]
    got = [cached(t, d) for t in unique for d in DOCS for _ in range(3)]
    assert got == [w for w in want for _ in range(3)]
    assert len(compiles) == len(TEMPLATES)  # once per template, not per document
    with pytest.raises(jinja2.UndefinedError):  # lm-eval's StrictUndefined still holds
        cached("{{ missing }}", DOCS[0])
