"""The default chat model's tokenizer: SentencePiece BPE trained on the generated corpus.

SentencePiece BPE pieces with their scores are exactly what llama.cpp's ``llama`` (SPM) tokenizer
merges, so the GGUF vocabulary reproduces the training tokenization. ``encode_chat`` mirrors how
llama.cpp tokenizes a rendered chat prompt with ``parse_special``: the text is split at the special
tokens and each fragment between them is encoded on its own.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import gguf
import sentencepiece as spm

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIALS = (IM_START, IM_END)

#: ChatML with Hermes-style tool calling (the format of Qwen 2.5 and NousResearch Hermes, which
#: lmgate's ``hermes`` tool parser reads): with tools, a system turn lists them as JSON lines inside
#: ``<tools>``; an assistant's call is ``<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>``;
#: tool results go back in a user turn as ``<tool_response>`` blocks. Without tools it renders plain
#: ChatML. The assistant turn ends with <|im_end|>, the model's end-of-generation token.
CHAT_TEMPLATE = (
    "{%- if tools -%}"
    "{{- '<|im_start|>system\n' -}}"
    "{%- if messages[0]['role'] == 'system' -%}{{- messages[0]['content'] + '\n' -}}{%- endif -%}"
    "{{- '<tools>\n' -}}"
    "{%- for tool in tools -%}{{- tool['function'] | tojson -}}{{- '\n' -}}{%- endfor -%}"
    "{{- '</tools><|im_end|>\n' -}}"
    "{%- elif messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' and loop.first -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\n' + (message['content'] or '') -}}"
    "{%- for call in message['tool_calls'] or [] -%}"
    "{{- '<tool_call>\n{\"name\": ' + call['function']['name'] | tojson + ', \"arguments\": ' -}}"
    "{%- if call['function']['arguments'] is string -%}{{- call['function']['arguments'] -}}"
    "{%- else -%}{{- call['function']['arguments'] | tojson -}}{%- endif -%}"
    "{{- '}\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\n<tool_response>\n' + message['content'] + '\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}{{- '<|im_end|>\n' -}}{%- endif -%}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")


@dataclass
class Tokenizer:
    """A trained SentencePiece model plus the ids the GGUF file needs."""

    processor: spm.SentencePieceProcessor

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self.processor.bos_id()

    @property
    def im_start_id(self) -> int:
        return self.processor.piece_to_id(IM_START)

    @property
    def im_end_id(self) -> int:
        return self.processor.piece_to_id(IM_END)

    def encode_chat(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens included), without BOS."""
        ids: list[int] = []
        for fragment in SPECIAL_SPLIT.split(text):
            if fragment in SPECIALS:
                ids.append(self.processor.piece_to_id(fragment))
            elif fragment:
                ids.extend(self.processor.encode(fragment))
        return ids

    def gguf_vocab(self) -> tuple[list[str], list[float], list[int]]:
        """Pieces, scores and llama.cpp token types, in id order."""
        sp = self.processor
        pieces, scores, types = [], [], []
        for i in range(sp.get_piece_size()):
            pieces.append(sp.id_to_piece(i))
            scores.append(sp.get_score(i))
            if sp.is_unknown(i):
                types.append(gguf.TokenType.UNKNOWN)
            elif sp.is_control(i) or sp.id_to_piece(i) in SPECIALS:
                types.append(gguf.TokenType.CONTROL)
            elif sp.is_byte(i):
                types.append(gguf.TokenType.BYTE)
            else:
                types.append(gguf.TokenType.NORMAL)
        return pieces, scores, types


def train_tokenizer(lines: list[str], vocab_size: int) -> Tokenizer:
    """Train a byte-fallback BPE model on ``lines``, with the ChatML markers as single tokens."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        character_coverage=1.0,
        user_defined_symbols=list(SPECIALS),
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        split_by_unicode_script=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=2,
        minloglevel=2,
    )
    return Tokenizer(spm.SentencePieceProcessor(model_proto=model.getvalue()))
