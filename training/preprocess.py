"""The one definition of text preprocessing: ONNX nodes that both training and serving run.

Training tokenises by running these nodes in onnxruntime, and the exported model embeds the very same nodes,
so the tokens a model was trained on are, by construction, the tokens it sees in production. Python string
methods are not used: their lowercasing differs from StringNormalizer's on a few characters (e.g. 'İ').
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cache

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from sentiment_core.contract import INPUT_NAME

ONNX_OPSET = 21
ML_OPSET = 3
MS_OPSET = 1
OPSET_IMPORTS = [
    helper.make_opsetid("", ONNX_OPSET),
    helper.make_opsetid("ai.onnx.ml", ML_OPSET),
    helper.make_opsetid("com.microsoft", MS_OPSET),
]

# RE2 syntax: \pL/\pN keep Unicode letters and digits (RE2's \w is ASCII-only and would cut 'café').
# Apostrophes stay inside tokens so "don't" and "dont" are features of their own; '_' keeps '_num_'.
TOKEN_PATTERN = r"[\pL\pN_']+"
# Optional (training --split-apostrophes): an apostrophe starts a token, so "it's" and the data's tokenised
# "it 's" both give "it", "'s", and "didn't" / "did n't" share the negation token "'t".
SPLIT_APOSTROPHES_PATTERN = r"[\pL\pN_]+|'[\pL\pN_]+"
NORMALIZER_LOCALE = "C.UTF-8"
BIGRAM_JOINER = " "  # cannot occur inside a token, so a bigram key is unambiguous
TOKENS = "tokens"  # [N, T] strings, right-padded with ""


def tokenizer_nodes(text: str = INPUT_NAME, pattern: str = TOKEN_PATTERN) -> list[onnx.NodeProto]:
    """Nodes from raw text [N] to TOKENS [N, T], right-padded with "" (a pad never matches a vocabulary key).

    Bigrams are not formed here: the exported graph pairs adjacent token *ids* (see training.export), which
    is the same feature as `bigrams()` below without building strings at serving time.
    """
    return [
        helper.make_node(
            "StringNormalizer",
            [text],
            ["normalized"],
            case_change_action="LOWER",
            is_case_sensitive=0,
            locale=NORMALIZER_LOCALE,
        ),
        helper.make_node(
            "Tokenizer",
            ["normalized"],
            [TOKENS],
            domain="com.microsoft",
            mark=0,
            mincharnum=1,
            pad_value="",
            tokenexp=pattern,
        ),
    ]


@cache
def _tokenizer_session(pattern: str = TOKEN_PATTERN) -> ort.InferenceSession:
    graph = helper.make_graph(
        tokenizer_nodes(pattern=pattern),
        "tokenizer",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info(TOKENS, TensorProto.STRING, ["N", "T"])],
    )
    model = helper.make_model(graph, opset_imports=OPSET_IMPORTS, producer_name="training.preprocess")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def tokenize(texts: Sequence[str], batch_size: int = 2048, pattern: str = TOKEN_PATTERN) -> list[list[str]]:
    """Tokens of each text, computed by the graph's own nodes."""
    session = _tokenizer_session(pattern)
    result: list[list[str]] = []
    for start in range(0, len(texts), batch_size):
        batch = np.array(texts[start : start + batch_size], dtype=object)
        (padded,) = session.run([TOKENS], {INPUT_NAME: batch})
        result.extend([token for token in row if token] for row in padded.tolist())
    return result


def bigrams(tokens: Sequence[str]) -> list[str]:
    """Adjacent token pairs: the bigram features, keyed as "left right" in the vocabulary."""
    return [f"{a}{BIGRAM_JOINER}{b}" for a, b in itertools.pairwise(tokens)]


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Feature string -> id (1-based; 0 means unknown and is left out of the mean)."""

    features: tuple[str, ...]
    token_pattern: str = TOKEN_PATTERN  # the Tokenizer regex the features were made with

    @classmethod
    def build(
        cls,
        token_lists: Iterable[Sequence[str]],
        *,
        min_count: int,
        max_size: int,
        token_pattern: str = TOKEN_PATTERN,
    ) -> Vocabulary:
        """Unigrams and bigrams seen at least min_count times, most frequent first, ties by string."""
        counts = FeatureCounts.count(token_lists, token_pattern=token_pattern)
        return counts.vocabulary(min_count=min_count, max_size=max_size)

    def __len__(self) -> int:
        return len(self.features)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        return {feature: i for i, feature in enumerate(self.features, start=1)}

    def encode(self, token_lists: Iterable[Sequence[str]]) -> list[list[int]]:
        """Known feature ids of each text: unigrams then bigrams, in the graph's order."""
        index = self.index
        encoded = []
        for tokens in token_lists:
            ids = [index[t] for t in tokens if t in index]
            ids.extend(index[b] for b in bigrams(tokens) if b in index)
            encoded.append(ids)
        return encoded


@dataclasses.dataclass(frozen=True)
class FeatureCounts:
    """Every unigram and bigram of some texts with its count, in the vocabulary's order (most frequent first,
    ties by string).

    Every vocabulary of these texts, whatever its min_count and max_size, is a prefix of this order and gives
    a feature the same id: texts encoded once with all features serve any of them through `restrict`.
    """

    features: tuple[str, ...]
    counts: tuple[int, ...]
    token_pattern: str = TOKEN_PATTERN  # the Tokenizer regex the token lists were made with

    @classmethod
    def count(cls, token_lists: Iterable[Sequence[str]], *, token_pattern: str = TOKEN_PATTERN) -> FeatureCounts:
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
            counts.update(bigrams(tokens))
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls(
            features=tuple(f for f, _ in ordered),
            counts=tuple(n for _, n in ordered),
            token_pattern=token_pattern,
        )

    def vocabulary(self, *, min_count: int, max_size: int) -> Vocabulary:
        """The features seen at least min_count times, at most max_size of them."""
        frequent = bisect.bisect_right(self.counts, -min_count, key=operator.neg)  # counts descend
        return Vocabulary(features=self.features[: min(frequent, max_size)], token_pattern=self.token_pattern)


def restrict(encoded: Iterable[Sequence[int]], size: int) -> list[list[int]]:
    """Ids encoded with a FeatureCounts vocabulary, as its prefix of `size` features encodes them."""
    return [[i for i in ids if i <= size] for ids in encoded]


def featurize(
    texts: Sequence[str],
    train_indices: Sequence[int],
    *,
    min_count: int,
    max_size: int,
    token_pattern: str = TOKEN_PATTERN,
) -> tuple[Vocabulary, list[list[int]]]:
    """Tokenise every text, build the vocabulary from the training part only, encode every text."""
    tokens = tokenize(texts, pattern=token_pattern)
    vocabulary = Vocabulary.build(
        (tokens[i] for i in train_indices), min_count=min_count, max_size=max_size, token_pattern=token_pattern
    )
    return vocabulary, vocabulary.encode(tokens)
