"""ChatTemplate renders as transformers' apply_chat_template does (whitespace control, loop
controls, raise_exception, tojson), for the demo template and a Llama-3-style one."""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers
from infermesh_cli.demo_tokenizer import DEMO_CHAT_TEMPLATE, build_demo_tokenizer, write_tokenizer_files
from infermesh_frontend.openai_http.chat_template import ChatTemplate, ChatTemplateError
from infermesh_frontend.tokenizer import FrontendTokenizer

# Block tags on their own lines: only right with trim_blocks + lstrip_blocks, as transformers sets them.
LLAMA3_STYLE = """{{ bos_token }}
{% for message in messages %}
    {% if message['role'] not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + message['role']) }}
    {% endif %}
    {% if loop.index0 > 5 %}{% break %}{% endif %}
<|start_header_id|>{{ message['role'] }}<|end_header_id|>

{{ message['content'] | trim }}<|eot_id|>
{% endfor %}
{% if add_generation_prompt %}
<|start_header_id|>assistant<|end_header_id|>

{% endif %}
{{ {'meta': 'ünïcode'} | tojson }}"""

MESSAGES = [
    {"role": "system", "content": "  Be brief.  "},
    {"role": "user", "content": "Say hi — 你好"},
    {"role": "assistant", "content": "Hi."},
    {"role": "user", "content": "Again"},
]


def _model_dir(tmp_path: Path, template: str) -> Path:
    write_tokenizer_files(tmp_path, build_demo_tokenizer(512), chat_template=template)
    return tmp_path


def _ours(model_dir: Path) -> ChatTemplate:
    tokenizer = FrontendTokenizer.from_model_path(model_dir)
    assert tokenizer.chat_template is not None
    special = {"bos_token": tokenizer.settings.bos_token, "eos_token": tokenizer.settings.eos_token}
    return ChatTemplate(tokenizer.chat_template, special)


@pytest.mark.parametrize("template", [DEMO_CHAT_TEMPLATE, LLAMA3_STYLE], ids=["demo", "llama3-style"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_renders_like_transformers(tmp_path: Path, template: str, add_generation_prompt: bool) -> None:
    model_dir = _model_dir(tmp_path, template)
    reference = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    expected = reference.apply_chat_template(
        MESSAGES, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert _ours(model_dir).render(MESSAGES, add_generation_prompt) == expected


def test_template_raise_exception_is_a_chat_template_error(tmp_path: Path) -> None:
    template = _ours(_model_dir(tmp_path, LLAMA3_STYLE))
    with pytest.raises(ChatTemplateError, match="unknown role tool"):
        template.render([{"role": "tool", "content": "x"}])


def test_template_that_does_not_compile_is_refused() -> None:
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for m in messages %}", {})
