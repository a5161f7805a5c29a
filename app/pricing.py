"""What tokens cost: the price table of MODEL_PRICES, in US dollars per million tokens.

Written `model=prompt/completion` per model, comma-separated, e.g.
`gpt-4o-mini=0.15/0.60,gpt-4o=2.50/10`. A model missing from the table has no known price: the
analytics page shows its tokens and leaves its cost blank rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass

PER_TOKENS = 1_000_000


@dataclass(frozen=True)
class Price:
    prompt: float  # USD per million prompt tokens
    completion: float  # USD per million completion tokens

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / PER_TOKENS


@dataclass(frozen=True)
class PriceTable:
    """Frozen (a field of the frozen Settings): model -> Price."""

    entries: tuple[tuple[str, Price], ...] = ()

    def get(self, model: str | None) -> Price | None:
        return dict(self.entries).get(model or "")

    def cost(self, model: str | None, prompt_tokens: int, completion_tokens: int) -> float | None:
        """The cost in USD; None when the model has no price in the table."""
        price = self.get(model)
        return None if price is None else price.cost(prompt_tokens, completion_tokens)


def parse_prices(raw: str) -> PriceTable:
    """The table, or ValueError with the entry that cannot be read."""
    table: dict[str, Price] = {}
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        model, equals, prices = entry.rpartition("=")
        prompt, slash, completion = prices.partition("/")
        try:
            price = Price(float(prompt), float(completion))
        except ValueError:
            price = None
        if not equals or not slash or not model.strip() or price is None \
                or price.prompt < 0 or price.completion < 0:
            raise ValueError(f"{entry!r} is not model=prompt/completion (USD per million tokens,"
                             f" e.g. 'gpt-4o-mini=0.15/0.60')")
        table[model.strip()] = price
    return PriceTable(tuple(table.items()))
