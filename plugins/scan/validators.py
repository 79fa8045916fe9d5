"""Checks a rule can ask of its match (``validate: NAME``): checksums and sanity.

Each takes the matched text and answers whether it is a real finding: a card
number passes Luhn, an IBAN mod 97, a national id its own check digits; a key is
not a placeholder such as ``sk-xxxxxxxxxxxxxxxxxxxx``.
"""

from __future__ import annotations

from collections.abc import Callable

_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def luhn(text: str) -> bool:
    """A payment card number: 13-19 digits, a known network prefix, Luhn check digit."""
    digits = _digits(text)
    if not 13 <= len(digits) <= 19 or digits[0] not in "23456":
        return False
    return _luhn_ok(digits)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, ch in enumerate(reversed(digits)):
        value = ord(ch) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban(text: str) -> bool:
    """An IBAN: the country's length and the ISO 13616 mod-97 check."""
    compact = "".join(text.split()).upper()
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    moved = compact[4:] + compact[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in moved))
    except ValueError:
        return False
    return number % 97 == 1


def us_ssn(text: str) -> bool:
    """A US SSN has no check digit; the issued ranges rule out 000, 666, 9xx, 00, 0000."""
    digits = _digits(text)
    if len(digits) != 9:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def fr_nir(text: str) -> bool:
    """French social security number (NIR): 13 characters and a mod-97 key."""
    compact = "".join(text.split()).upper()
    if len(compact) != 15:
        return False
    body, key = compact[:13], compact[13:]
    body = body.replace("2A", "19").replace("2B", "18")
    if not body.isdigit() or not key.isdigit():
        return False
    return 97 - int(body) % 97 == int(key)


_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def es_dni(text: str) -> bool:
    """Spanish DNI / NIE: the letter is the number mod 23."""
    compact = text.replace("-", "").replace(" ", "").upper()
    if len(compact) != 9:
        return False
    head = compact[:8]
    if head[0] in "XYZ":
        head = str("XYZ".index(head[0])) + head[1:]
    if not head.isdigit():
        return False
    return _DNI_LETTERS[int(head) % 23] == compact[8]


def de_tax_id(text: str) -> bool:
    """German tax id (Steuer-IdNr): 11 digits, ISO 7064 MOD 11,10 check digit."""
    digits = _digits(text)
    if len(digits) != 11 or digits[0] == "0":
        return False
    product = 10
    for ch in digits[:10]:
        total = (int(ch) + product) % 10 or 10
        product = (total * 2) % 11
    check = 11 - product
    return (0 if check == 10 else check) == int(digits[10])


def nl_bsn(text: str) -> bool:
    """Dutch BSN: the eleven test (weights 9..2 and -1)."""
    digits = _digits(text)
    if len(digits) != 9:
        return False
    total = sum(int(d) * w for d, w in zip(digits[:8], range(9, 1, -1), strict=True)) - int(digits[8])
    return total % 11 == 0 and total != 0


def ca_sin(text: str) -> bool:
    """Canadian SIN: 9 digits, Luhn."""
    digits = _digits(text)
    return len(digits) == 9 and digits[0] not in "08" and _luhn_ok(digits)


def not_placeholder(text: str) -> bool:
    """A real-looking token: not ``xxxx``, ``your-key-here``, ``1234...`` or one repeated class."""
    tail = text[-20:]
    if len(set(tail.lower())) < 8:
        return False
    lowered = text.lower()
    if any(word in lowered for word in ("your", "example", "xxxx", "placeholder", "redacted", "dummy", "<", "...")):
        return False
    has_digit = any(ch.isdigit() for ch in text)
    has_alpha = any(ch.isalpha() for ch in text)
    return has_digit and has_alpha


_ALL: dict[str, Callable[[str], bool]] = {
    "luhn": luhn,
    "iban": iban,
    "us_ssn": us_ssn,
    "fr_nir": fr_nir,
    "es_dni": es_dni,
    "de_tax_id": de_tax_id,
    "nl_bsn": nl_bsn,
    "ca_sin": ca_sin,
    "not_placeholder": not_placeholder,
}
NAMES = tuple(_ALL)


def get(name: str) -> Callable[[str], bool] | None:
    return _ALL.get(name)
