"""A small byte-level BPE tokenizer trained on a built-in corpus, for demo and test models.

Random-weight demo models have no tokenizer of their own; this one round-trips any UTF-8 text
(every byte is in the initial alphabet) and comes out the same on every run, so a model
directory built today tokenizes the same way tomorrow.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Llama's convention (<unk>=0, <s>=1, </s>=2) so the ids match what random test configs already
# use. Byte-level BPE never produces <unk>; it is kept only to hold id 0 in that convention.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + BYTE_ALPHABET_SIZE

DEMO_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# A few KB of mixed text so merges cover English words, code, accented Latin, CJK and emoji.
_CORPUS = """
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Once upon a time there was a small model that learned to write stories about the sea and the stars.
It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of
foolishness. The weather today is sunny with a light breeze from the west; tomorrow it will rain.
Large language models are served by a frontend, a scheduler and a group of workers. The scheduler
decides which requests run in each step, and the workers compute the next token for every sequence.
Please summarize the following paragraph in one sentence. What is the capital of France? Paris is
the capital of France, and Berlin is the capital of Germany. Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100
1000 3.14159 2.71828 -17 +23 50% $19.99 2026-11-24 12:30:45.
def fibonacci(n: int) -> int:
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)

for i in range(10):
    print(f"value {i}: {fibonacci(i)}")

class BlockPool:
    def __init__(self, num_blocks):
        self.free = list(range(num_blocks))

    def allocate(self):
        return self.free.pop()

int main(void) { printf("hello, world\\n"); return 0; }
const add = (a, b) => a + b; let xs = [1, 2, 3].map((x) => x * 2);
SELECT name, count(*) FROM requests WHERE status = 'done' GROUP BY name ORDER BY 2 DESC;
{"model": "demo", "prompt": "Hello", "max_tokens": 16, "temperature": 0.7, "stream": true}
Le café est très bon à Paris. Où est la bibliothèque ? Je voudrais un thé, s'il vous plaît.
Ça va très bien, merci. L'élève a réussi l'examen grâce à sa persévérance et à son naïf espoir.
Der Bär läuft über die Straße. Schöne Grüße aus München! Die Mädchen spielen im Garten.
El niño comió una manzana. ¿Dónde está la estación? ¡Qué día tan bonito! Mañana será otro día.
A menina está à procura do pão. São Paulo é uma cidade enorme. Ação, coração, informação.
Zażółć gęślą jaźń. Příliš žluťoučký kůň úpěl ďábelské ódy. Smörgåsbord och räksmörgås.
Привет, мир! Как дела? Я люблю читать книги. Москва — столица России.
Γειά σου κόσμε. Η γλώσσα είναι όμορφη.
你好，世界！今天天气很好。我们一起去公园散步吧。机器学习和自然语言处理是很有趣的领域。
大型语言模型可以生成文本、回答问题和翻译句子。请用一句话总结下面的段落。
こんにちは、世界。今日はいい天気ですね。東京は日本の首都です。ありがとうございます。
안녕하세요, 세계! 오늘 날씨가 좋네요. 감사합니다.
مرحبا بالعالم. שלום עולם. नमस्ते दुनिया।
Emoji: 🙂 😀 🎉 🚀 ❤️ 👍 🐍 🌍 🔥 ✨ 👩‍💻 🇫🇷 🤖 — and symbols: © ® ™ € £ ¥ ± × ÷ → ← ∑ ∞ ≤ ≥ ≠.
"""


def build_demo_tokenizer(vocab_size: int) -> Tokenizer:
    """Returns a byte-level BPE tokenizer with at most `vocab_size` ids (<unk>=0, <s>=1, </s>=2).

    Training is deterministic (same corpus, single pass, no randomness), so every call with the
    same `vocab_size` gives the same vocabulary and merges. The built-in corpus supports a few
    hundred merges; a larger `vocab_size` yields fewer ids than asked, never more.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size {vocab_size} is too small for a byte-level tokenizer: it needs at least "
            f"{MIN_VOCAB_SIZE} ids ({len(SPECIAL_TOKENS)} special tokens + {BYTE_ALPHABET_SIZE} bytes)"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(keepends=True), trainer)
    return tokenizer


def write_tokenizer_files(
    out_dir: str | Path,
    tokenizer: Tokenizer,
    bos: str = "<s>",
    eos: str = "</s>",
    chat_template: str = DEMO_CHAT_TEMPLATE,
) -> tuple[int, int]:
    """Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`;
    returns the (bos, eos) token ids, for the model's config.json and generation_config.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for token in (bos, eos):
        if tokenizer.token_to_id(token) is None:
            raise ValueError(f"special token {token!r} is not in the tokenizer's vocabulary")
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": SPECIAL_TOKENS[0] if tokenizer.token_to_id(SPECIAL_TOKENS[0]) is not None else None,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": 1_000_000,
        "chat_template": chat_template,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))
    special_tokens_map = {"bos_token": bos, "eos_token": eos}
    (out / "special_tokens_map.json").write_text(json.dumps(special_tokens_map, indent=2))
    return tokenizer.token_to_id(bos), tokenizer.token_to_id(eos)
