#!/usr/bin/env python3
"""Writes tests/data/pii-corpus.jsonl, the corpus the PII redactor is measured on.

    python3 tests/data/make_pii_corpus.py

Standard library only; seeded, so re-running rewrites the same file.

Each line is {"text": ..., "pii": [{"kind": "EMAIL"|"PHONE"|"CARD"|"IBAN",
"value": ...}]}: the sentence and every piece of personal data in it,
exactly as written there. Sentences are hand-written templates (support
mails, order notes, forms, chat, logs; English, German, French, Spanish)
filled with values made to be valid (card numbers that pass Luhn with real
issuer prefixes, IBANs with correct mod-97 check digits and national
lengths, phone numbers in national and international formats) and with
near-misses that must NOT be reported: numbers one digit off (Luhn or
mod-97 fails), random order and tracking numbers, ISBNs, dates and times,
IP addresses, version strings, prices, file names with '@'.

Values are synthetic: no line describes a real person. Card numbers use
the networks' prefixes but random account digits; phone numbers use the
fictional ranges where a country has one (555-01xx in North America, 07700
900xxx and 020 7946 0xxx in the UK).
"""

import json
import random
import string
from pathlib import Path

OUT = Path(__file__).resolve().parent / "pii-corpus.jsonl"
rng = random.Random(20261126)


# ----------------------------------------------------------------- values

def luhn_digit(body):
    total = 0
    for i, ch in enumerate(reversed(body)):
        v = int(ch)
        if i % 2 == 0:
            v *= 2
            if v > 9:
                v -= 9
        total += v
    return str((10 - total % 10) % 10)


CARD_SHAPES = [
    # (prefixes, length, grouping)
    (["4"], 16, [4, 4, 4, 4]),
    (["4"], 13, None),
    (["51", "52", "53", "54", "55"], 16, [4, 4, 4, 4]),
    (["2221", "2500", "2720"], 16, [4, 4, 4, 4]),
    (["34", "37"], 15, [4, 6, 5]),
    (["6011", "65"], 16, [4, 4, 4, 4]),
    (["3528", "3589"], 16, [4, 4, 4, 4]),
    (["36"], 14, [4, 6, 4]),
    (["62"], 19, [4, 4, 4, 4, 3]),
]


def card_digits(valid=True):
    prefixes, length, grouping = rng.choice(CARD_SHAPES)
    body = rng.choice(prefixes)
    while len(body) < length - 1:
        body += rng.choice(string.digits)
    check = luhn_digit(body)
    if not valid:
        check = str((int(check) + rng.randint(1, 9)) % 10)
    return body + check, grouping


def fmt_groups(digits, grouping, sep):
    if grouping is None or sep == "":
        return digits
    out, at = [], 0
    for g in grouping:
        out.append(digits[at:at + g])
        at += g
    return sep.join(out)


def card(valid=True):
    digits, grouping = card_digits(valid)
    sep = rng.choice(["", " ", " ", "-"])
    return fmt_groups(digits, grouping, sep)


IBAN_BBAN = {
    # country: BBAN pattern, n = digit, a = capital letter, c = either
    "DE": "nnnnnnnnnnnnnnnnnn",
    "GB": "aaaannnnnnnnnnnnnn",
    "FR": "nnnnnnnnnnccccccccccenn".replace("e", "c"),
    "ES": "nnnnnnnnnnnnnnnnnnnn",
    "IT": "annnnnnnnnncccccccccccc",
    "NL": "aaaannnnnnnnnn",
    "BE": "nnnnnnnnnnnn",
    "CH": "nnnnncccccccccccc",
    "AT": "nnnnnnnnnnnnnnnn",
    "PL": "nnnnnnnnnnnnnnnnnnnnnnnn",
    "SE": "nnnnnnnnnnnnnnnnnnnn",
    "NO": "nnnnnnnnnnn",
    "IE": "aaaannnnnnnnnnnnnn",
    "PT": "nnnnnnnnnnnnnnnnnnnnn",
}


def iban_check(country, bban):
    rearranged = bban + country + "00"
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return "%02d" % (98 - int(number) % 97)


def iban(valid=True):
    country = rng.choice(sorted(IBAN_BBAN))
    bban = ""
    for p in IBAN_BBAN[country]:
        if p == "n":
            bban += rng.choice(string.digits)
        elif p == "a":
            bban += rng.choice(string.ascii_uppercase)
        else:
            bban += rng.choice(string.digits + string.ascii_uppercase)
    check = iban_check(country, bban)
    if not valid:
        # One digit of the account off: mod-97 catches every single change.
        digits = [i for i, ch in enumerate(bban) if ch.isdigit()]
        i = rng.choice(digits)
        bban = bban[:i] + str((int(bban[i]) + rng.randint(1, 9)) % 10) + bban[i + 1:]
    solid = country + check + bban
    if rng.random() < 0.55:
        return " ".join(solid[i:i + 4] for i in range(0, len(solid), 4))
    return solid


FIRST = ["anna", "ben", "carla", "david", "emma", "felix", "greta", "hugo", "ines",
         "jonas", "karim", "lena", "marta", "nils", "olga", "pablo", "rosa", "sven",
         "tomas", "ute", "yuki", "zoe", "j", "m"]
LAST = ["schmidt", "martin", "garcia", "rossi", "novak", "smith", "dubois", "jansen",
        "kowalski", "lopez", "weber", "brown", "moreau", "fischer", "silva"]
DOMAINS = ["example.com", "example.org", "mail.example.net", "example.co.uk",
           "firma-example.de", "exemple.fr", "correo.example.es", "uni-example.edu",
           "example.io", "post.example.at"]


def email():
    f, l = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice([f"{f}.{l}", f"{f}{l}", f"{f[0]}.{l}", f"{f}_{l}{rng.randint(1, 99)}",
                        f"{f}+{rng.choice(['news', 'shop', 'bank'])}", f"{l}-{f}", "info",
                        "support", "billing"])
    address = f"{local}@{rng.choice(DOMAINS)}"
    return address.upper() if rng.random() < 0.05 else address


def phone():
    kind = rng.choice(["us", "us", "uk", "uk", "de", "fr", "es", "intl"])
    n = lambda k: "".join(rng.choice(string.digits) for _ in range(k))  # noqa: E731
    if kind == "us":
        area = rng.choice(["212", "303", "415", "617", "702", "213", "512", "800"])
        local = "555-01" + n(2)
        return rng.choice([f"({area}) {local}", f"{area}-{local}",
                           f"{area}.{local.replace('-', '.')}", f"+1 {area} {local}",
                           f"1-{area}-{local}", f"+1-{area}-{local}", f"{area} {local.replace('-', ' ')}"])
    if kind == "uk":
        return rng.choice([f"020 7946 0{n(3)}", f"07700 900{n(3)}", f"+44 20 7946 0{n(3)}",
                           f"+44 7700 900{n(3)}", f"+44 (0)20 7946 0{n(3)}", f"0161 496 0{n(3)}"])
    if kind == "de":
        return rng.choice([f"030 {n(8)}", f"+49 30 {n(8)}", f"0151 {n(8)}", f"+49 151 {n(8)}",
                           f"089-{n(7)}", f"+49 (0)89 {n(7)}", f"0176{n(7)}"])
    if kind == "fr":
        pairs = " ".join(n(2) for _ in range(4))
        return rng.choice([f"01 {pairs}", f"06 {pairs}", f"+33 6 {pairs}", f"+33 1 {pairs}",
                           f"06.{pairs.replace(' ', '.')}", f"07{pairs.replace(' ', '')}"])
    if kind == "es":
        return rng.choice([f"+34 91 {n(3)} {n(2)} {n(2)}", f"+34 6{n(2)} {n(3)} {n(3)}",
                           f"0034 6{n(2)} {n(3)} {n(3)}"])
    return rng.choice([f"+31 20 {n(3)} {n(4)}", f"+39 06 {n(4)} {n(4)}", f"+46 8 {n(3)} {n(3)} {n(2)}",
                       f"+48 22 {n(3)} {n(2)} {n(2)}", f"+81 3 {n(4)} {n(4)}", f"+61 2 {n(4)} {n(4)}"])


# ------------------------------------------------------------ near-misses

def order_number():
    n = rng.randint(13, 19)
    return "".join(rng.choice(string.digits) for _ in range(n))


def near_miss():
    d = lambda k: "".join(rng.choice(string.digits) for _ in range(k))  # noqa: E731
    y, mo, da = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([
        f"{y}-{mo:02d}-{da:02d}", f"{da:02d}.{mo:02d}.{y}", f"{mo:02d}/{da:02d}/{y}",
        f"{y}-{mo:02d}-{da:02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
        f"{da:02d}.{mo:02d}.{y} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
        f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        f"v{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}",
        f"{rng.randint(0, 4)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}",
        f"978-{rng.randint(0, 9)}-{d(2)}-{d(6)}-{rng.randint(0, 9)}",
        f"1Z{d(3)}AB{d(10)}", f"#{d(8)}", f"{d(5)}", f"{d(6)}-{d(4)}",
        f"{rng.randint(1, 999)} {d(3)} {d(3)}", f"{d(3)}-{d(2)}-{d(4)}",
        f"{d(9)}", f"1{d(12)}", f"{d(3)}.{d(3)}.{d(3)}.{d(3)}",
        f"{rng.randint(1, 9)}{d(3)},{d(2)}", f"INV-{y}-{d(5)}",
        f"{rng.randint(10, 99)}:{rng.randint(10, 59)}:{rng.randint(10, 59)}",
    ])


# -------------------------------------------------------------- sentences

POSITIVE = [
    ("EMAIL", "Please send the signed contract to {} by Friday."),
    ("EMAIL", "Bitte schicken Sie die Rechnung an {}, danke."),
    ("EMAIL", "Mon adresse est {} si vous avez des questions."),
    ("EMAIL", "Escríbeme a {} cuando llegue el pedido."),
    ("EMAIL", "From: Support <{}>"),
    ("EMAIL", "reply-to={}; lang=en"),
    ("EMAIL", "mailto:{}"),
    ("EMAIL", "I changed my login to {} yesterday, can you update it?"),
    ("EMAIL", "({}) is the address on file."),
    ("EMAIL", "cc: {}, the team lead"),
    ("PHONE", "Call me back on {} after 6pm."),
    ("PHONE", "Meine Handynummer ist {}."),
    ("PHONE", "Vous pouvez me joindre au {} demain."),
    ("PHONE", "Mi teléfono es {}, llámame."),
    ("PHONE", "Phone: {}"),
    ("PHONE", "The customer left a voicemail, number {}."),
    ("PHONE", "Tel. {} (office hours only)"),
    ("PHONE", "Reach the front desk at {} or by email."),
    ("CARD", "My card number is {} and it expires 09/28."),
    ("CARD", "Kartennummer: {}"),
    ("CARD", "Le paiement avec la carte {} a été refusé."),
    ("CARD", "Cobrar a la tarjeta {} por favor."),
    ("CARD", "card={} cvv=***"),
    ("CARD", "Charge {} for the remaining balance."),
    ("CARD", "Why was {} declined twice today?"),
    ("IBAN", "Please transfer the deposit to {}."),
    ("IBAN", "IBAN: {} (BIC on the invoice)"),
    ("IBAN", "Überweisung bitte auf {} mit Verwendungszweck 4711."),
    ("IBAN", "Mon RIB : {}"),
    ("IBAN", "Cuenta para la devolución: {}"),
    ("IBAN", "Refund went to {}, not to my new account."),
]

MIXED = [
    "Customer {EMAIL} paid with {CARD}; call {PHONE} if it bounces.",
    "Name: M. Weber, Tel: {PHONE}, E-Mail: {EMAIL}, IBAN: {IBAN}",
    "Update: new phone {PHONE} and new account {IBAN}.",
    "Contact {EMAIL} or {PHONE} about card {CARD}.",
    "{EMAIL} asked us to refund {IBAN} instead of {CARD}.",
]

NEGATIVE = [
    "Your order {} has shipped and should arrive on {}.",
    "Build {} failed on {}; see the log for details.",
    "Ticket {} was reopened on {}.",
    "Tracking number {} (carrier updated {}).",
    "Die Bestellung {} wurde am {} storniert.",
    "Commande {} livrée le {}.",
    "Pedido {} enviado el {}.",
    "Server {} restarted at {}.",
    "Invoice {} totals 1.299,00 EUR, due {}.",
    "Reference {} / batch {}",
]

NEGATIVE_FIXED = [
    "Upgrade left-pad@1.3.0 and lodash@4.17.21 before the release.",
    "The retina asset is logo@2x.png, the other one logo@3x.png.",
    "Ping @maria and @devops-team on the thread.",
    "Mail goes through root@localhost on the build box.",
    "Meet me @ the station at 10:30.",
    "Population grew from 1 234 567 to 1 301 002 between 2010 and 2020.",
    "The ISBN is 978-3-16-148410-0.",
    "Use the test key sk_live_4111111111111111x nowhere.",
    "Serial SN4111111111111111 belongs to the old router.",
    "Coordinates 48.8584, 2.2945 are the tower.",
    "The meeting is 2025-03-14 09:00-10:30 in room 4.12.",
    "Temperature logged: -12.5, 3.25, 17.75 degrees.",
    "Read chapter 3.2.1 and pages 120-145.",
    "Our VAT number is DE123456789.",
    "The product code AB12 CDEF GHIJ KLMN is discontinued.",
    "Timestamp 1700000000000 marks the first event.",
    "Tel Aviv and Telford are both on the list.",
    "SKU 00012345678905 is the barcode.",
    "Version 10.0.19045.3693 is installed.",
    "He scored 4 goals in 12 matches (2019-2020).",
]


# Hand-written lines in shapes the templates above do not produce.
POSITIVE_FIXED = [
    ("Reach me at +1 (212) 555-0147 ext. 12.", [("PHONE", "+1 (212) 555-0147")]),
    ("Tel.: +49-89-1234567", [("PHONE", "+49-89-1234567")]),
    ("WhatsApp me: +4915112345678", [("PHONE", "+4915112345678")]),
    ("Fax 0049 30 1234 5678", [("PHONE", "0049 30 1234 5678")]),
    ("Phone 4155550173 (mobile)", [("PHONE", "4155550173")]),
    ("my cell is 212 555 0199, text first", [("PHONE", "212 555 0199")]),
    ("card: 5555555555554444 exp 12/27", [("CARD", "5555555555554444")]),
    ("Amex 378282246310005 on file", [("CARD", "378282246310005")]),
    ("visa 4012 8888 8888 1881 was charged twice", [("CARD", "4012 8888 8888 1881")]),
    ("email: Jean-Luc.Picard@starfleet.example.org.",
     [("EMAIL", "Jean-Luc.Picard@starfleet.example.org")]),
    ("IBAN GB82 WEST 1234 5698 7654 32 (old account)", [("IBAN", "GB82 WEST 1234 5698 7654 32")]),
    ("iban:NL91ABNA0417164300", [("IBAN", "NL91ABNA0417164300")]),
    ("Konto CH93 0076 2011 6238 5295 7 bitte", [("IBAN", "CH93 0076 2011 6238 5295 7")]),
    ("RIB FR14 2004 1010 0505 0001 3M02 606", [("IBAN", "FR14 2004 1010 0505 0001 3M02 606")]),
    ("\"ana.silva@example.pt\" wrote on 2024-02-02", [("EMAIL", "ana.silva@example.pt")]),
]

NEGATIVE_MORE = [
    "Call 1-800-FLOWERS for a bouquet.",
    "Error code 0x80070005 again.",
    "MAC 00:1A:2B:3C:4D:5E is on the allow list.",
    "UUID 123e4567-e89b-12d3-a456-426614174000 is the request id.",
    "Credit limit raised to 5000 USD from 4500.",
    "PIN 1234 is not a good choice.",
    "Tax ID 12-3456789 appears on the W-9.",
    "Flight LH 400 leaves at 10:15 from gate 0112.",
    "Rack 4, shelf 12, bin 0345 678.",
    "The build hash is 4a1f9c3e and the run id 1048576.",
]


def main():
    lines = []

    def add(text, pii):
        lines.append({"text": text, "pii": [{"kind": k, "value": v} for k, v in pii]})

    makers = {"EMAIL": email, "PHONE": phone, "CARD": card, "IBAN": iban}
    # Positives: every template a few times with fresh values.
    for _ in range(6):
        for kind, template in POSITIVE:
            value = makers[kind]()
            add(template.format(value), [(kind, value)])
    for _ in range(8):
        for template in MIXED:
            pii, text = [], template
            for kind in ("EMAIL", "PHONE", "CARD", "IBAN"):
                while "{" + kind + "}" in text:
                    value = makers[kind]()
                    text = text.replace("{" + kind + "}", value, 1)
                    pii.append((kind, value))
            # Keep the order of appearance.
            pii.sort(key=lambda kv: text.index(kv[1]))
            add(text, pii)
    # Near-misses of cards and IBANs: one digit off.
    for _ in range(4):
        for kind, template in POSITIVE:
            if kind == "CARD":
                add(template.format(card(valid=False)), [])
            elif kind == "IBAN":
                add(template.format(iban(valid=False)), [])
    # Random order numbers of card length, dates, versions, IPs, ….
    for _ in range(16):
        for template in NEGATIVE:
            first = order_number() if rng.random() < 0.4 else near_miss()
            add(template.format(first, near_miss()), [])
    for text in NEGATIVE_FIXED + NEGATIVE_MORE:
        add(text, [])
    for text, pii in POSITIVE_FIXED:
        add(text, pii)

    with OUT.open("w", encoding="utf-8", newline="\n") as out:
        for line in lines:
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    kinds = {}
    for line in lines:
        for p in line["pii"]:
            kinds[p["kind"]] = kinds.get(p["kind"], 0) + 1
    print(f"wrote {OUT.name}: {len(lines)} lines, "
          f"{sum(1 for line in lines if not line['pii'])} without personal data, {kinds}")


if __name__ == "__main__":
    main()
