"""The project's own synthetic implicative NLI generator (SCI-like).

Sentences are templated over a lexicon of implicative constructions.  Each
construction carries a *signature* ``p|n`` giving the truth of its complement
when the construction is used in a positive context (``p``) or a negated
context (``n``): ``+`` true, ``-`` false, ``o`` unknown.  Fractional values
(``.9``, ``.7``, ``.5``, ``.4``) are probabilities of truth and are discretised
for labelling: ``>= 0.7`` counts as ``+``, ``<= 0.3`` as ``-`` and anything in
between as ``o`` (so ``.9|-`` and ``-|.7`` label like ``+|-`` and ``-|+``,
``.4|-`` like ``o|-`` and ``+|.5`` like ``+|o``); the ``signature`` column keeps
the fractional value.

Example kinds (see :func:`label_forward` / :func:`label_reverse`):

* forward (70%): premise = implicative sentence (positive or negated),
  hypothesis = the complement, positive or negated;
* reverse (20%): premise = the plain complement sentence, hypothesis = the
  implicative sentence.  The plain sentence never *entails* the implicative one
  (which adds content: an attempt, a chance, an obligation ...), so those cases
  are ``permits``; an incompatible hypothesis is ``contradicts``;
* distractor (10%): forward premise, hypothesis about an unrelated complement
  -> ``permits``.

Nested variant: ``"X managed to remember to leave"``.  The outer construction's
value in the premise's context is the inner construction's context; the
composition (:func:`compose_signatures`) is computed on discretised values, so
it is always one of the nine pure signatures (all in ``SIGNATURES``); no pair is
skipped.  ``construction`` is ``"outer+inner"``.

Variants: ``joint`` (all constructions in all splits), ``disjoint``
(validation/test constructions never in train), ``mismatch`` (train lacks the
signatures in :data:`MISMATCH_HELD_OUT`; validation/test equal joint's for the
same seed), ``nested``.  Test is generated first, then validation, then train,
and no (premise, hypothesis) pair occurs in two splits.  Within a split a
signature is drawn uniformly first, then one construction (or nested pair) of
that signature, which keeps the labels balanced (no class above ~50%).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from nli_routing.data.sci import SIGNATURES, SPLITS, VARIANTS

__all__ = [
    "Construction", "LEXICON", "SUBJECTS", "COMPLEMENTS", "MISMATCH_HELD_OUT",
    "signature_values", "compose_signatures", "label_forward", "label_reverse",
    "disjoint_partition", "generate_sci", "write_sci", "main",
]


@dataclass(frozen=True)
class Construction:
    """An implicative construction: ``base`` follows "did not"/"to", ``past`` is the simple past."""

    name: str
    signature: str
    base: str  # "manage to", "be forced to", "realize that"
    past: str  # "managed to", "was forced to", "realized that"

    @property
    def is_be(self) -> bool:
        return self.base.startswith("be ")

    @property
    def takes_that(self) -> bool:
        return self.base.endswith(" that")


_LEX = [
    ("manage", "+|-", "manage to", "managed to"),
    ("remember", "+|-", "remember to", "remembered to"),
    ("take time", "+|-", "take the time to", "took the time to"),
    ("bother", "+|-", "bother to", "bothered to"),
    ("take opportunity", "+|-", "take the opportunity to", "took the opportunity to"),
    ("dare", "+|-", "dare to", "dared to"), ("see fit", "+|-", "see fit to", "saw fit to"),
    ("fail", "-|+", "fail to", "failed to"), ("forget", "-|+", "forget to", "forgot to"),
    ("neglect", "-|+", "neglect to", "neglected to"),
    ("waste chance", "-|+", "waste a chance to", "wasted a chance to"),
    ("miss chance", "-|+", "miss the chance to", "missed the chance to"),
    ("break promise", "-|+", "break a promise to", "broke a promise to"),
    ("know", "+|+", "know that", "knew that"), ("realize", "+|+", "realize that", "realized that"),
    ("notice", "+|+", "notice that", "noticed that"),
    ("regret", "+|+", "regret that", "regretted that"),
    ("discover", "+|+", "discover that", "discovered that"),
    ("pretend", "-|-", "pretend to", "pretended to"),
    ("pretend that", "-|-", "pretend that", "pretended that"),
    ("be forced", "+|o", "be forced to", "was forced to"),
    ("be made", "+|o", "be made to", "was made to"),
    ("be compelled", "+|o", "be compelled to", "was compelled to"),
    ("hesitate", "o|+", "hesitate to", "hesitated to"),
    ("wait long", "o|+", "wait long to", "waited long to"),
    ("refuse", "-|o", "refuse to", "refused to"), ("decline", "-|o", "decline to", "declined to"),
    ("be too afraid", "-|o", "be too afraid to", "was too afraid to"),
    ("be allowed", "o|-", "be allowed to", "was allowed to"),
    ("be permitted", "o|-", "be permitted to", "was permitted to"),
    ("have permission", "o|-", "have permission to", "had permission to"),
    ("attempt", "o|o", "attempt to", "attempted to"), ("try", "o|o", "try to", "tried to"),
    ("want", "o|o", "want to", "wanted to"), ("plan", "o|o", "plan to", "planned to"),
    ("hope", "o|o", "hope to", "hoped to"), ("intend", "o|o", "intend to", "intended to"),
    ("promise", "o|o", "promise to", "promised to"),
    ("be able", ".9|-", "be able to", "was able to"),
    ("have time", ".9|-", "have the time to", "had the time to"),
    ("find way", ".9|-", "find a way to", "found a way to"),
    ("have chance", ".4|-", "have the chance to", "had the chance to"),
    ("have opportunity", ".4|-", "have the opportunity to", "had the opportunity to"),
    ("be too busy", "-|.7", "be too busy to", "was too busy to"),
    ("be too tired", "-|.7", "be too tired to", "was too tired to"),
    ("be persuaded", "+|.5", "be persuaded to", "was persuaded to"),
    ("be pressured", "+|.5", "be pressured to", "was pressured to"),
]
LEXICON: tuple[Construction, ...] = tuple(Construction(*row) for row in _LEX)

SUBJECTS: tuple[tuple[str, str], ...] = (
    ("Maria", "she"), ("John", "he"), ("Aisha", "she"), ("Peter", "he"), ("Chen", "he"),
    ("Sofia", "she"), ("Omar", "he"), ("Lena", "she"), ("Tom", "he"), ("Priya", "she"),
    ("Carlos", "he"), ("Emma", "she"), ("the manager", "they"), ("my neighbor", "they"),
    ("the new intern", "they"), ("our teacher", "they"), ("the mayor", "they"),
    ("the old farmer", "they"), ("her brother", "he"), ("his aunt", "she"),
)

#: complement verb phrases "base|past[|past participle]" (participle defaults to past)
_VPS = (
    "leave the house|left the house", "call the doctor|called the doctor",
    "finish the report|finished the report", "lock the door|locked the door",
    "pay the rent|paid the rent", "water the plants|watered the plants",
    "feed the cat|fed the cat", "send the letter|sent the letter",
    "buy the tickets|bought the tickets", "read the contract|read the contract",
    "sign the lease|signed the lease", "visit the museum|visited the museum",
    "book a table|booked a table", "fix the bike|fixed the bike",
    "clean the kitchen|cleaned the kitchen", "take the train|took the train|taken the train",
    "catch the bus|caught the bus", "write the speech|wrote the speech|written the speech",
    "see a dentist|saw a dentist|seen a dentist", "eat the cake|ate the cake|eaten the cake",
    "drive to work|drove to work|driven to work", "sell the car|sold the car",
    "answer the email|answered the email", "return the books|returned the books",
    "open the window|opened the window", "close the shop|closed the shop",
    "wash the dishes|washed the dishes", "apply for the job|applied for the job",
    "join the choir|joined the choir", "learn the song|learned the song",
    "cook dinner|cooked dinner", "pick up the keys|picked up the keys",
    "fill out the form|filled out the form", "check the results|checked the results",
    "repair the roof|repaired the roof", "attend the meeting|attended the meeting",
    "quit the team|quit the team", "move to Boston|moved to Boston",
    "tell the truth|told the truth", "meet the director|met the director",
    "win the race|won the race",
    "speak at the conference|spoke at the conference|spoken at the conference",
    "sing at the wedding|sang at the wedding|sung at the wedding",
    "swim across the lake|swam across the lake|swum across the lake",
    "bring the wine|brought the wine", "paint the fence|painted the fence",
    "plant the tomatoes|planted the tomatoes", "print the slides|printed the slides",
)
COMPLEMENTS: tuple[tuple[str, str, str], ...] = tuple(
    (f[0], f[1], f[2] if len(f) > 2 else f[1]) for f in (v.split("|") for v in _VPS)
)

MODIFIERS = ("", "", " yesterday", " last week", " on Monday", " this morning", " last night")
MISMATCH_HELD_OUT: frozenset[str] = frozenset({"o|+", "+|.5", "-|.7", "+|+"})
MODE_WEIGHTS: tuple = (("forward", 0.70), ("reverse", 0.20), ("distractor", 0.10))
NEG_STYLES: tuple[str, ...] = ("not", "n't", "never")


# --------------------------------------------------------------------------- semantics
def _discretise(value: str) -> str:
    if value in ("+", "-", "o"):
        return value
    p = float(value)
    return "+" if p >= 0.7 else "-" if p <= 0.3 else "o"


def signature_values(signature: str) -> tuple[str, str]:
    """Discretised ``(positive, negative)`` complement values of ``signature`` (``+``/``-``/``o``)."""
    pos, neg = signature.split("|")
    return _discretise(pos), _discretise(neg)


def compose_signatures(outer: str, inner: str) -> str:
    """Signature of ``outer`` embedding ``inner`` ("managed to forget to ...").

    The outer value in each context is the inner construction's context; an
    unknown (``o``) inner context gives ``o`` unless the inner values agree.
    """
    ipos, ineg = signature_values(inner)
    through = {"+": ipos, "-": ineg, "o": ipos if ipos == ineg else "o"}
    opos, oneg = signature_values(outer)
    return f"{through[opos]}|{through[oneg]}"


def label_forward(signature: str, premise_positive: bool, hypothesis_positive: bool) -> str:
    """Label for premise = construction (positive/negated context), hypothesis = complement."""
    value = signature_values(signature)[0 if premise_positive else 1]
    if value == "o":
        return "permits"
    return "entails" if (value == "+") == hypothesis_positive else "contradicts"


def label_reverse(signature: str, premise_positive: bool, hypothesis_positive: bool) -> str:
    """Label for premise = plain complement (true/false), hypothesis = construction sentence.

    ``contradicts`` when the hypothesis's context forces the opposite complement
    value; otherwise ``permits`` (the implicative adds content never entailed).
    """
    fact = "+" if premise_positive else "-"
    implied = signature_values(signature)[0 if hypothesis_positive else 1]
    return "permits" if implied in (fact, "o") else "contradicts"


# --------------------------------------------------------------------------- surface forms
def _context(c: Construction, positive: bool, neg: str) -> str:
    if positive:
        return c.past
    if c.is_be:
        return {"not": "was not ", "n't": "wasn't ", "never": "was never "}[neg] + c.base[3:]
    return {"not": "did not " + c.base, "n't": "didn't " + c.base, "never": "never " + c.past}[neg]


def _complement(c: Construction, vp: tuple[str, str, str], pronoun: str) -> str:
    return f"{pronoun} had {vp[2]}" if c.takes_that else vp[0]


def _plain(vp: tuple[str, str, str], positive: bool, neg: str) -> str:
    if positive:
        return vp[1]
    return {"not": "did not " + vp[0], "n't": "didn't " + vp[0], "never": "never " + vp[1]}[neg]


Item = tuple[Construction, ...]  # (construction,) or (outer, inner)


def _item_signature(item: Item) -> str:
    return item[0].signature if len(item) == 1 else compose_signatures(item[0].signature, item[1].signature)


def _implicative(item: Item, subj: tuple[str, str], vp, positive: bool, neg: str) -> str:
    inner = "".join(c.base + " " for c in item[1:])  # "" or "remember to "
    return f"{subj[0]} {_context(item[0], positive, neg)} {inner}{_complement(item[-1], vp, subj[1])}"


# --------------------------------------------------------------------------- pools
def disjoint_partition(seed: int = 0) -> dict[str, list[Construction]]:
    """Split :data:`LEXICON` into train/validation/test constructions for ``disjoint``.

    Per signature (shuffled by ``seed``): with >= 5 constructions one goes to
    validation and another to test; with 3-4 one is shared by validation and
    test; the rest (and all of smaller groups) stay in train.
    """
    rng = random.Random(f"{seed}:disjoint-partition")
    parts: dict[str, list[Construction]] = {s: [] for s in SPLITS}
    for sig in SIGNATURES:
        group = [c for c in LEXICON if c.signature == sig]
        rng.shuffle(group)
        if len(group) >= 5:
            parts["validation"].append(group[0])
            parts["test"].append(group[1])
            parts["train"].extend(group[2:])
        elif len(group) >= 3:
            parts["validation"].append(group[0])
            parts["test"].append(group[0])
            parts["train"].extend(group[1:])
        else:
            parts["train"].extend(group)
    return parts


def _nested_pool() -> list[Item]:
    return [
        (outer, inner)
        for outer in LEXICON
        if not outer.takes_that
        for inner in LEXICON
        if inner.name != outer.name and compose_signatures(outer.signature, inner.signature) in SIGNATURES
    ]


def _pools(variant: str, seed: int) -> dict[str, list[Item]]:
    flat: list[Item] = [(c,) for c in LEXICON]
    if variant == "joint":
        return {s: flat for s in SPLITS}
    if variant == "mismatch":
        train = [it for it in flat if it[0].signature not in MISMATCH_HELD_OUT]
        return {"train": train, "validation": flat, "test": flat}
    if variant == "disjoint":
        return {s: [(c,) for c in cs] for s, cs in disjoint_partition(seed).items()}
    if variant == "nested":
        nested = _nested_pool()
        return {s: nested for s in SPLITS}
    raise ValueError(f"unknown variant {variant!r}; allowed: {list(VARIANTS)}")


# --------------------------------------------------------------------------- generation
def _example(item: Item, rng: random.Random) -> dict[str, str]:
    subj = rng.choice(SUBJECTS)
    vp = rng.choice(COMPLEMENTS)
    mod = rng.choice(MODIFIERS)
    mode = rng.choices([m for m, _ in MODE_WEIGHTS], weights=[w for _, w in MODE_WEIGHTS])[0]
    p_pos, h_pos = rng.random() < 0.5, rng.random() < 0.5
    p_neg, h_neg = rng.choice(NEG_STYLES), rng.choice(NEG_STYLES)
    sig = _item_signature(item)
    if mode == "reverse":
        premise = f"{subj[0]} {_plain(vp, p_pos, p_neg)}"
        hypothesis = _implicative(item, subj, vp, h_pos, h_neg)
        label = label_reverse(sig, p_pos, h_pos)
    else:
        premise = _implicative(item, subj, vp, p_pos, p_neg)
        if mode == "distractor":
            other = rng.choice([c for c in COMPLEMENTS if c != vp])
            hypothesis, label = f"{subj[0]} {_plain(other, h_pos, h_neg)}", "permits"
        else:
            hypothesis = f"{subj[0]} {_plain(vp, h_pos, h_neg)}"
            label = label_forward(sig, p_pos, h_pos)
    return {
        "premise": premise + mod,
        "hypothesis": hypothesis + mod,
        "label": label,
        "signature": sig,
        "construction": "+".join(c.name for c in item),
    }


def _generate_split(pool: Sequence[Item], n: int, rng: random.Random, seen: set) -> list[dict]:
    by_sig: dict[str, list[Item]] = {}
    for item in pool:  # stratify: a signature first (uniformly), then one of its items
        by_sig.setdefault(_item_signature(item), []).append(item)
    groups = [by_sig[s] for s in SIGNATURES if s in by_sig]
    rows: list[dict] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could only generate {len(rows)} unique examples of {n} requested")
        row = _example(rng.choice(rng.choice(groups)), rng)
        key = (row["premise"], row["hypothesis"])
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    return rows


def generate_sci(
    variant: str, n_train: int, n_validation: int, n_test: int, seed: int = 0
) -> dict[str, list[dict]]:
    """Generate one synthetic SCI variant; deterministic given ``seed``.

    Returns ``{"train": [...], "validation": [...], "test": [...]}`` with rows
    holding premise, hypothesis, label, signature and construction.
    """
    pools = _pools(variant, seed)
    family = {"joint": "flat", "mismatch": "flat"}.get(variant, variant)
    sizes = {"train": n_train, "validation": n_validation, "test": n_test}
    seen: set = set()
    out: dict[str, list[dict]] = {}
    for split in ("test", "validation", "train"):
        rng = random.Random(f"{seed}:{family}:{split}")
        out[split] = _generate_split(pools[split], sizes[split], rng, seen)
    return {s: out[s] for s in SPLITS}


def write_sci(
    out_dir: str | Path,
    variants: Iterable[str] = VARIANTS,
    sizes: Mapping[str, int] | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """Write ``out_dir/<variant>/{train,validation,test}.jsonl``; returns variant -> folder."""
    sizes = dict(sizes or {"train": 3000, "validation": 500, "test": 500})
    written: dict[str, Path] = {}
    for variant in variants:
        data = generate_sci(variant, sizes["train"], sizes["validation"], sizes["test"], seed=seed)
        folder = Path(out_dir) / variant
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in data.items():
            with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        written[variant] = folder
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: ``python -m nli_routing.data.synthetic --out nli_routing/data/sci_synthetic``."""
    ap = argparse.ArgumentParser(description="Generate the synthetic SCI-style implicative NLI data.")
    ap.add_argument("--out", required=True, help="output folder (one subfolder per variant)")
    ap.add_argument("--n_train", type=int, default=3000)
    ap.add_argument("--n_validation", type=int, default=500)
    ap.add_argument("--n_test", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir() or any(p.exists() and not p.is_dir() for p in out.parents):
        raise ValueError(f"--out {out}: a file is in the way (the output is a folder)")
    for name in ("n_train", "n_validation", "n_test"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    sizes = {"train": args.n_train, "validation": args.n_validation, "test": args.n_test}
    for variant, folder in write_sci(args.out, args.variants, sizes, args.seed).items():
        print(f"{variant}: wrote {folder}")


if __name__ == "__main__":
    main()
