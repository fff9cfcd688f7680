"""Chat templates: an export's Jinja ``chat_template``, rendered as transformers'
``apply_chat_template`` renders it, in a sandbox.

The environment is the one transformers builds: jinja2's ``ImmutableSandboxedEnvironment``
(no attribute writes, no unsafe calls, ranges of at most 100,000 items) with
``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, a ``tojson`` filter
that keeps non-ASCII text, and the globals ``raise_exception`` and ``strftime_now``. A
template sees ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token`` (and
``tools``/``documents`` as None). The template comes from a manifest, i.e. from whoever
published the model, so its output is capped at :data:`MAX_RENDERED_CHARS` and every error
(a syntax error, ``raise_exception``, a sandbox violation, the cap) is a ModelError.

A model without a template renders with :data:`PLAIN_TEMPLATE`: one ``role: content``
line per message, then ``assistant:``.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence

from .errors import ModelError
from .manifest import Manifest
from .tokenizer import MAX_PROMPT_CHARS

__all__ = [
    "MAX_RENDERED_CHARS",
    "PLAIN_TEMPLATE",
    "chat_prompt",
    "check_messages",
    "compile_template",
    "render_chat_template",
]

# One line per message ("role: content"), then "assistant:" for the reply.
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
MAX_RENDERED_CHARS = MAX_PROMPT_CHARS
MAX_MESSAGES = 4096


class _TemplateRaised(Exception):
    """What ``raise_exception`` raises inside a template."""


@functools.lru_cache(maxsize=32)
def compile_template(source: str):
    """The compiled ``source`` in transformers' sandboxed environment; ModelError when it
    does not compile."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise _TemplateRaised(str(message))

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ModelError(f"chat template does not compile: {e.message} (line {e.lineno})") from None


def check_messages(messages: object) -> list[dict]:
    """``messages`` as a list of ``{"role": str, "content": str, ...}`` dicts; ModelError
    naming the first bad one."""
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        raise ModelError("messages must be a list of {role, content} objects")
    if not messages:
        raise ModelError("messages must not be empty")
    if len(messages) > MAX_MESSAGES:
        raise ModelError(f"at most {MAX_MESSAGES} messages, got {len(messages)}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ModelError(f"messages[{i}] must be an object")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise ModelError(f"messages[{i}].role must be a non-empty string")
        if not isinstance(content, str):
            raise ModelError(f"messages[{i}].content must be a string")
        out.append(dict(m))
    return out


def render_chat_template(
    source: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """``source`` rendered for ``messages`` (transformers' ``apply_chat_template(...,
    tokenize=False)``). Raises ModelError for any template error."""
    import jinja2

    template = compile_template(source)
    context = {
        "messages": check_messages(messages),
        "add_generation_prompt": add_generation_prompt,
        "bos_token": bos_token,
        "eos_token": eos_token,
        "tools": None,
        "documents": None,
    }
    parts: list[str] = []
    size = 0
    try:
        for piece in template.generate(**context):
            size += len(piece)
            if size > MAX_RENDERED_CHARS:
                raise ModelError(f"chat template output is over {MAX_RENDERED_CHARS} characters")
            parts.append(piece)
    except _TemplateRaised as e:
        raise ModelError(f"chat template refused the messages: {e}") from None
    except jinja2.exceptions.SecurityError as e:
        raise ModelError(f"chat template broke the sandbox's rules: {e}") from None
    except jinja2.TemplateError as e:
        raise ModelError(f"chat template failed: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError) as e:
        raise ModelError(f"chat template failed: {type(e).__name__}: {e}") from None
    except RecursionError:
        raise ModelError("chat template recursed too deeply") from None
    return "".join(parts)


def chat_prompt(manifest: Manifest, messages: list[dict]) -> str:
    """The job prompt text for chat ``messages`` on ``manifest``'s model: its template (or
    :data:`PLAIN_TEMPLATE`) rendered as ``apply_chat_template`` does, with a generation
    prompt. Encoded as a prompt (:meth:`Tokenizer.encode`, which adds no second BOS to a
    text that starts with one) it gives ``apply_chat_template(..., tokenize=True)``'s ids.
    """
    tok = manifest.tokenizer
    return render_chat_template(
        manifest.chat_template or PLAIN_TEMPLATE,
        messages,
        add_generation_prompt=True,
        bos_token=tok.bos_token,
        eos_token=tok.eos_token,
    )
