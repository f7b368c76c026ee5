"""OpenAI response objects for completions and chat completions, whole and as stream chunks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from infermesh.v1 import common_pb2

from infermesh_frontend.completion_output import CompletionDelta, CompletionOutput

_FINISH_REASONS = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    # The scheduler ended the request without finishing it (e.g. an operator's Abort).
    common_pb2.FINISH_REASON_ABORT: "abort",
}


def finish_reason_name(finish_reason: int) -> str | None:
    """OpenAI's finish_reason; None while the completion goes on."""
    return _FINISH_REASONS.get(finish_reason)


def usage_object(usage: common_pb2.Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


class ResponseShape:
    """How one endpoint words its answer; `token_text` names a token id (for logprobs)."""

    object_name = ""
    chunk_object_name = ""

    def __init__(
        self,
        response_id: str,
        created: int,
        model: str,
        token_text: Callable[[int], str],
        token_bytes: Callable[[int], bytes] | None = None,
    ) -> None:
        self.response_id = response_id
        self.created = created
        self.model = model
        self._token_text = token_text
        self._token_bytes = token_bytes or (lambda token_id: token_text(token_id).encode())

    def _envelope(self, object_name: str) -> dict[str, object]:
        return {"id": self.response_id, "object": object_name, "created": self.created, "model": self.model}

    def response(
        self,
        outputs: Sequence[CompletionOutput],
        usage: common_pb2.Usage,
        logprobs: bool,
        echo_text: str = "",
    ) -> dict:
        """The whole answer: `outputs` as choices 0..n-1 in their order, each text after `echo_text`."""
        body = self._envelope(self.object_name)
        body["choices"] = [
            self.choice(index, output, echo_text + output.text, logprobs)
            for index, output in enumerate(outputs)
        ]
        body["usage"] = usage_object(usage)
        return body

    def chunk(
        self, choices: list[dict], usage: common_pb2.Usage | None = None, with_usage: bool = False
    ) -> dict:
        body = self._envelope(self.chunk_object_name)
        body["choices"] = choices
        if with_usage:
            # With include_usage every chunk has the field; only the last one fills it.
            body["usage"] = usage_object(usage) if usage is not None else None
        return body

    def choice(self, index: int, output: CompletionOutput, text: str, logprobs: bool) -> dict:
        raise NotImplementedError

    def delta_choice(self, delta: CompletionDelta, logprobs: bool) -> dict:
        raise NotImplementedError


class CompletionShape(ResponseShape):
    """/v1/completions: `text_completion` objects."""

    object_name = "text_completion"
    chunk_object_name = "text_completion"

    def _logprobs(
        self, token_ids: list[int], logprobs: list[float], top: list[tuple[list[int], list[float]]]
    ) -> dict:
        texts = [self._token_text(token_id) for token_id in token_ids]
        offsets, position = [], 0
        for text in texts:
            offsets.append(position)
            position += len(text)
        return {
            "tokens": texts,
            "token_logprobs": list(logprobs),
            "top_logprobs": [
                {self._token_text(i): lp for i, lp in zip(ids, lps, strict=True)} for ids, lps in top
            ]
            or None,
            "text_offset": offsets,
        }

    def choice(self, index: int, output: CompletionOutput, text: str, logprobs: bool) -> dict:
        return {
            "index": index,
            "text": text,
            "finish_reason": finish_reason_name(output.finish_reason),
            "logprobs": self._logprobs(output.token_ids, output.logprobs, output.top_logprobs)
            if logprobs
            else None,
        }

    def delta_choice(self, delta: CompletionDelta, logprobs: bool) -> dict:
        return {
            "index": delta.index,
            "text": delta.text,
            "finish_reason": finish_reason_name(delta.finish_reason),
            "logprobs": self._logprobs(delta.token_ids, delta.logprobs, delta.top_logprobs)
            if logprobs
            else None,
        }


class ChatShape(ResponseShape):
    """/v1/chat/completions: `chat.completion` objects and `chat.completion.chunk` deltas."""

    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    def _entry(self, token_id: int, logprob: float) -> dict:
        raw = self._token_bytes(token_id)
        # `token` is text; a token holding part of a UTF-8 character shows as U+FFFD there,
        # while `bytes` carries it exactly (joining them rebuilds the text).
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    def _logprobs(
        self, token_ids: list[int], logprobs: list[float], top: list[tuple[list[int], list[float]]]
    ) -> dict:
        content = []
        for position, (token_id, logprob) in enumerate(zip(token_ids, logprobs, strict=False)):
            entry = self._entry(token_id, logprob)
            ids, lps = top[position] if position < len(top) else ([], [])
            entry["top_logprobs"] = [self._entry(i, lp) for i, lp in zip(ids, lps, strict=True)]
            content.append(entry)
        return {"content": content}

    def choice(self, index: int, output: CompletionOutput, text: str, logprobs: bool) -> dict:
        return {
            "index": index,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason_name(output.finish_reason),
            "logprobs": self._logprobs(output.token_ids, output.logprobs, output.top_logprobs)
            if logprobs
            else None,
        }

    def role_choice(self, index: int) -> dict:
        """The first chunk of each choice: who is speaking."""
        return {
            "index": index,
            "delta": {"role": "assistant", "content": ""},
            "finish_reason": None,
            "logprobs": None,
        }

    def delta_choice(self, delta: CompletionDelta, logprobs: bool) -> dict:
        return {
            "index": delta.index,
            "delta": {"content": delta.text} if delta.text else {},
            "finish_reason": finish_reason_name(delta.finish_reason),
            "logprobs": self._logprobs(delta.token_ids, delta.logprobs, delta.top_logprobs)
            if logprobs
            else None,
        }
