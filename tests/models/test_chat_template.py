"""Chat templates rendered as transformers' apply_chat_template renders them, in a sandbox:
real-world template styles against the strings they must give, the fallback, and every
way a template can fail being a clear ModelError."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HfTokenizer

from aipg.models import PLAIN_TEMPLATE, ModelError, Tokenizer, chat_prompt, render_chat_template
from aipg.models.chat import MAX_RENDERED_CHARS
from aipg.models.hf_import import import_export
from aipg.models.manifest import load_model_dir
from aipg.testing.hf_exports import CHATML_TEMPLATE, LLAMA2_TEMPLATE, write_llm_export

CHAT = [
    {"role": "system", "content": "You are kind."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "How are you?"},
]


def test_llama2_template():
    text = render_chat_template(LLAMA2_TEMPLATE, CHAT, bos_token="<s>", eos_token="</s>")
    assert text == (
        "<s>[INST] <<SYS>>\nYou are kind.\n<</SYS>>\n\nHi [/INST] Hello! </s>"
        "<s>[INST] How are you? [/INST]"
    )


def test_chatml_template_with_and_without_generation_prompt():
    user = [{"role": "user", "content": "Hi"}]
    assert render_chat_template(CHATML_TEMPLATE, user) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_chat_template(CHATML_TEMPLATE, CHAT, add_generation_prompt=False) == (
        "<|im_start|>system\nYou are kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nHow are you?<|im_end|>\n"
    )


def test_blocks_are_trimmed_as_transformers_sets_jinja():
    # Zephyr-style: one tag per line, indented. trim_blocks drops the newline after a
    # block tag, lstrip_blocks the indentation before one.
    template = (
        "{% for message in messages %}\n"
        "    {% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\\n' + message['content'] + eos_token }}\n"
        "    {% else %}\n"
        "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}\n"
        "{{ '<|assistant|>' }}\n"
        "{% endif %}"
    )
    text = render_chat_template(template, CHAT[:2], eos_token="</s>")
    assert text == "<|system|>\nYou are kind.</s>\n<|user|>\nHi</s>\n<|assistant|>\n"


def test_tojson_keeps_text_and_loop_controls_work():
    template = (
        "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{{ m.content | tojson }}{% endfor %}"
    )
    assert (
        render_chat_template(template, [*CHAT[:1], {"role": "user", "content": "café"}]) == '"café"'
    )


def test_raise_exception_is_a_clear_error():
    bad = [CHAT[1], CHAT[1]]  # two user turns in a row
    with pytest.raises(ModelError, match="refused the messages: Conversation roles must alternate"):
        render_chat_template(LLAMA2_TEMPLATE, bad, bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("{% for m in messages %}{{ m.content }", "does not compile"),
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "sandbox"),
        ("{% set _ = messages.append({'role': 'x'}) %}", "sandbox"),
        ("{{ messages[0].content + 1 }}", "failed"),
        ("{{ undefined_thing.attribute }}", "failed"),
    ],
)
def test_a_template_that_breaks_is_a_model_error(template, why):
    with pytest.raises(ModelError, match=why):
        render_chat_template(template, CHAT)


def test_a_runaway_template_stops_at_the_output_cap():
    template = (
        "{% for i in range(100000) %}{% for j in range(100000) %}0123456789{% endfor %}{% endfor %}"
    )
    start = time.monotonic()
    with pytest.raises(ModelError, match=f"over {MAX_RENDERED_CHARS}"):
        render_chat_template(template, CHAT)
    assert time.monotonic() - start < 30  # stopped at the cap, not after 10**10 characters


def test_messages_are_checked():
    for bad in ([], "hi", [{"role": "user"}], [{"role": "", "content": "x"}], [["user", "x"]]):
        with pytest.raises(ModelError, match="messages"):
            render_chat_template(CHATML_TEMPLATE, bad)


def test_the_plain_template_is_the_old_transcript(llm_dir):
    manifest = load_model_dir(llm_dir).manifest
    assert manifest.chat_template == ""
    assert chat_prompt(manifest, CHAT[:2]) == "system: You are kind.\nuser: Hi\nassistant:"
    assert render_chat_template(PLAIN_TEMPLATE, CHAT[:2], add_generation_prompt=False) == (
        "system: You are kind.\nuser: Hi\n"
    )


@pytest.mark.parametrize("style", ["llama", "chatml"])
def test_a_chat_prompt_encodes_as_apply_chat_template_tokenizes(tmp_path, style):
    model = load_model_dir(
        import_export(write_llm_export(tmp_path / "src", style=style), tmp_path / "out")
    )
    info = model.manifest.tokenizer
    data = model.read_verified(info.role)
    rendered = chat_prompt(model.manifest, CHAT)
    # apply_chat_template(tokenize=True): the rendered text, no special tokens added.
    want = HfTokenizer.from_str(data.decode()).encode(rendered, add_special_tokens=False).ids
    ids = Tokenizer(data, info).encode(rendered)
    assert ids == want
    # Id 1 is <s> (one per user turn) or <|im_start|> (one per message, one for the reply).
    assert ids.count(1) == (2 if style == "llama" else 5)


def test_a_sentencepiece_chat_splits_out_its_special_tokens(tmp_path):
    import sentencepiece as spm

    src = write_llm_export(tmp_path / "src", style="llama", tokenizer="sentencepiece")
    model = load_model_dir(import_export(src, tmp_path / "out"))
    info = model.manifest.tokenizer
    data = model.read_verified(info.role)
    rendered = chat_prompt(model.manifest, CHAT)
    sp = spm.SentencePieceProcessor(model_proto=data)
    # transformers' slow tokenizer: special tokens split out, each piece between encoded.
    want = [
        1,
        *sp.encode("[INST] <<SYS>>\nYou are kind.\n<</SYS>>\n\nHi [/INST] Hello! "),
        2,
        1,
        *sp.encode("[INST] How are you? [/INST]"),
    ]
    assert Tokenizer(data, info).encode(rendered) == want


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text()}
        ),
        min_size=1,
        max_size=5,
    )
)
def test_the_plain_template_renders_the_transcript_for_any_messages(messages):
    old = "\n".join([*(f"{m['role']}: {m['content']}" for m in messages), "assistant:"])
    assert render_chat_template(PLAIN_TEMPLATE, messages) == old
