"""Prices per model and the exact cost of a call.

Money is integer **picodollars** (10^-12 USD) end to end: a price of $0.005 per
million tokens (a cached gpt-5-nano token) is 5,000 picodollars a token, so any
price with up to six decimals per million tokens, times a token count, is an exact
integer. No float is ever summed; floats appear only where a figure is shown.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

import msgspec

from gateway.exchange import Usage

PICO_PER_USD = 10**12
#: picodollars per token for a price of 1 USD per million tokens
_PICO_PER_TOKEN_PER_USD_PER_MTOK = 10**6
_DATE_SUFFIX = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|-latest)$")
_LOOKUP_CACHE_MAX = 1024


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """USD per million tokens, as the table and the ``prices`` option write them."""

    input_per_mtok: float | int | str
    output_per_mtok: float | int | str
    cached_input_per_mtok: float | int | str | None = None
    cache_write_per_mtok: float | int | str | None = None


class PriceTable(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    date: str
    sources: list[str]
    models: dict[str, ModelPrice]


class Rates(msgspec.Struct, frozen=True):
    """Picodollars per token of each kind."""

    input: int
    output: int
    cached_input: int
    cache_write: int


def usd_to_pico(value: float | int | str | Decimal) -> int:
    """An exact conversion: ``0.1`` (the float) is read as the decimal it was written as."""
    try:
        amount = value if isinstance(value, Decimal) else Decimal(value if isinstance(value, str) else repr(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"must be a non-negative number, got {value!r}")
    pico = amount * PICO_PER_USD
    if pico != pico.to_integral_value():
        raise ValueError(f"{value!r} has more than 12 decimals")
    return int(pico)


def per_mtok_to_pico_per_token(value: float | int | str) -> int:
    try:
        amount = Decimal(value if isinstance(value, str) else repr(value))
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"must be a non-negative number, got {value!r}")
    pico = amount * _PICO_PER_TOKEN_PER_USD_PER_MTOK
    if pico != pico.to_integral_value():
        raise ValueError(f"{value!r} has more than 6 decimals")
    return int(pico)


def rates_of(price: ModelPrice) -> Rates:
    input_rate = per_mtok_to_pico_per_token(price.input_per_mtok)
    cached = price.cached_input_per_mtok
    write = price.cache_write_per_mtok
    return Rates(
        input=input_rate,
        output=per_mtok_to_pico_per_token(price.output_per_mtok),
        cached_input=input_rate if cached is None else per_mtok_to_pico_per_token(cached),
        cache_write=input_rate if write is None else per_mtok_to_pico_per_token(write),
    )


def load_builtin() -> PriceTable:
    data = resources.files(__package__).joinpath("prices.yaml").read_bytes()
    return msgspec.yaml.decode(data, type=PriceTable)


def pico_to_usd_text(pico: int) -> str:
    """``1500000`` -> ``"0.0000015"``: the exact decimal, no exponent, no trailing zeros.

    Integer arithmetic: it runs for every answer (``x-gateway-cost-usd``), and
    Decimal took a few microseconds of it."""
    sign = "-" if pico < 0 else ""
    whole, fraction = divmod(abs(pico), PICO_PER_USD)
    if not fraction:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:012d}".rstrip("0")


def pico_to_usd(pico: int) -> float:
    """For display only (JSON figures, spans): the nearest float (int / int rounds correctly)."""
    return pico / PICO_PER_USD


class Prices:
    """The built-in table with the config's rows over it; lookups by exact or base name."""

    def __init__(self, overrides: dict[str, ModelPrice]) -> None:
        table = load_builtin()
        self.date = table.date
        self.sources = tuple(table.sources)
        self.rates: dict[str, Rates] = {name: rates_of(price) for name, price in table.models.items()}
        for name, price in overrides.items():  # errors name the model: see Config checks
            self.rates[name] = rates_of(price)
        self._found: dict[str, Rates | None] = {}

    def lookup(self, model: str | None) -> Rates | None:
        """The rates of ``model``; a dated or ``-latest`` name falls back to its base."""
        if not model:
            return None
        found = self._found.get(model, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        rates = self.rates.get(model)
        if rates is None:
            base = _DATE_SUFFIX.sub("", model)
            rates = self.rates.get(base)
        if len(self._found) < _LOOKUP_CACHE_MAX:  # model names come from callers: bounded
            self._found[model] = rates
        return rates


_MISSING: Any = object()


def cost_pico(rates: Rates, usage: Usage) -> int:
    """The exact cost of ``usage`` in picodollars.

    ``usage.input_tokens`` counts every prompt token; the cached and cache-write
    ones among them are billed at their own rates, the rest at the input rate.
    """
    # Figures below zero (a provider's garbage) count as none; conditionals, not max(): this runs on every call.
    cached = usage.cached_input_tokens if usage.cached_input_tokens > 0 else 0
    written = usage.cache_write_tokens if usage.cache_write_tokens > 0 else 0
    plain = usage.input_tokens - cached - written
    output = usage.output_tokens
    return (
        (plain * rates.input if plain > 0 else 0)
        + cached * rates.cached_input
        + written * rates.cache_write
        + (output * rates.output if output > 0 else 0)
    )
