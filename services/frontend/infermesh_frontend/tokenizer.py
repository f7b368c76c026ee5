"""The served model's tokenizer: HF `tokenizers` plus the settings of tokenizer_config.json."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from infermesh_frontend.detokenizer import Detokenizer, new_detokenizer

logger = logging.getLogger(__name__)


class TokenizerLoadError(Exception):
    """The model directory has no usable tokenizer."""


@dataclass(slots=True)
class TokenizerSettings:
    """What tokenizer_config.json says about special tokens and prompts."""

    bos_token: str | None = None
    eos_token: str | None = None
    # None: not stated, so the post-processor in tokenizer.json decides (as transformers does).
    add_bos_token: bool | None = None
    add_eos_token: bool | None = None
    chat_template: str | None = None


def _token_content(value: object) -> str | None:
    # Older configs store special tokens as AddedToken dicts ({"content": "<s>", ...}).
    if isinstance(value, dict):
        content = value.get("content")
        return content if isinstance(content, str) else None
    return value if isinstance(value, str) else None


def read_tokenizer_settings(model_path: Path) -> TokenizerSettings:
    """Reads tokenizer_config.json (and chat_template.jinja) when present; defaults otherwise."""
    settings = TokenizerSettings()
    config_file = model_path / "tokenizer_config.json"
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise TokenizerLoadError(f"{config_file} is not valid JSON: {error}") from error
        settings.bos_token = _token_content(config.get("bos_token"))
        settings.eos_token = _token_content(config.get("eos_token"))
        if isinstance(config.get("add_bos_token"), bool):
            settings.add_bos_token = config["add_bos_token"]
        if isinstance(config.get("add_eos_token"), bool):
            settings.add_eos_token = config["add_eos_token"]
        template = config.get("chat_template")
        if isinstance(template, str):
            settings.chat_template = template
        elif isinstance(template, list):
            # Named templates ([{"name": "default", "template": ...}, ...]): keep the default one.
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            settings.chat_template = named.get("default")
    jinja_file = model_path / "chat_template.jinja"
    if settings.chat_template is None and jinja_file.is_file():
        settings.chat_template = jinja_file.read_text(encoding="utf-8")
    return settings


class FrontendTokenizer:
    """Encodes prompts and decodes token ids the way the served model expects."""

    def __init__(self, tokenizer: Tokenizer, settings: TokenizerSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self.bos_token_id = self._special_id(settings.bos_token)
        self.eos_token_id = self._special_id(settings.eos_token)
        if settings.add_bos_token and self.bos_token_id is None:
            raise TokenizerLoadError(
                f"tokenizer_config.json sets add_bos_token but its bos_token {settings.bos_token!r} "
                "is not in tokenizer.json"
            )

    @classmethod
    def from_model_path(cls, model_path: str | Path) -> FrontendTokenizer:
        """Loads tokenizer.json (and tokenizer_config.json when present) from `model_path`."""
        path = Path(model_path)
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise TokenizerLoadError(
                f"no tokenizer.json in {path}: the frontend needs a Hugging Face fast tokenizer "
                "file in the model directory (set --model-path to a directory that has one)"
            )
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as error:  # tokenizers raises a bare Exception on a bad file
            raise TokenizerLoadError(f"cannot load {tokenizer_file}: {error}") from error
        return cls(tokenizer, read_tokenizer_settings(path))

    def _special_id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def chat_template(self) -> str | None:
        """The chat template from tokenizer_config.json, kept for the chat API."""
        return self.settings.chat_template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; with `add_special_tokens`, as a prompt (BOS etc.) for this model."""
        if not add_special_tokens:
            return self.tokenizer.encode(text, add_special_tokens=False).ids
        stated = self.settings.add_bos_token is not None or self.settings.add_eos_token is not None
        if not stated:
            # tokenizer.json's post-processor knows the template (e.g. Llama 3 adds its BOS there).
            return self.tokenizer.encode(text, add_special_tokens=True).ids
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if self.settings.add_bos_token and self.bos_token_id is not None:
            ids = [self.bos_token_id, *ids]
        if self.settings.add_eos_token and self.eos_token_id is not None:
            ids = [*ids, self.eos_token_id]
        return ids

    def detokenizer(self, context_ids: Sequence[int], skip_special_tokens: bool = True) -> Detokenizer:
        """A fresh incremental detokenizer for one completion that follows `context_ids`."""
        return new_detokenizer(self.tokenizer, context_ids, skip_special_tokens)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of `token_ids`; incomplete UTF-8 sequences come out as U+FFFD."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)
