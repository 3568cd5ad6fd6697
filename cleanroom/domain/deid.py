"""The de-identification policy a data owner declares for a dataset, and its validation.

Pure Python: what a column is (type, role), how each quasi-identifier is coarsened, and the
schema that remains after de-identification. cleanroom/datasets/deidentify.py executes it.
Error messages name columns and rules only; a policy holds no data value.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal

from cleanroom.domain.errors import FieldViolation, bad_request

MIN_K = 2
MAX_K = 1000
DEFAULT_K = 5
MAX_LABEL_CLASSES = 10000
MAX_CATEGORIES = 1000
MAX_CATEGORY_LENGTH = 256


class ColumnType(enum.Enum):
    """Declared value type; the numbers match cleanroom.v1.ColumnType (0 is "unspecified")."""

    INTEGER = 1
    FLOAT = 2
    STRING = 3
    DATE = 4
    BOOLEAN = 5
    # A stream's reading time: ISO 8601 text (one UTC offset, or none, for the whole column) or
    # whole epoch seconds; stored as int64 epoch seconds (cleanroom.domain.streams).
    TIMESTAMP = 6


class ColumnRole(enum.Enum):
    """What a column means for privacy; the numbers match cleanroom.v1.ColumnRole.

    What each role does lives in ROLE_SPECS (below): a new role is one entry there.
    """

    DIRECT_IDENTIFIER = 1  # dropped at intake
    PATIENT_KEY = 2  # replaced by a keyed pseudonym; the privacy unit
    QUASI_IDENTIFIER = 3  # generalised, then checked for k-anonymity
    FEATURE = 4
    LABEL = 5
    LINKAGE_ID = 6  # replaced by the platform-wide linkage pseudonym; links a person across hospitals
    TIME = 7  # streams only: the reading time, shifted per patient by a secret offset and coarsened
    UNIT = 8  # streams only: a channel's unit per reading, checked against its declared unit, then dropped

    @property
    def spec(self) -> RoleSpec:
        return ROLE_SPECS[self]


class Treatment(enum.Enum):
    """What intake does to a column's values before anything is stored."""

    DROP = enum.auto()  # removed: never stored
    PSEUDONYMIZE = enum.auto()  # replaced by a keyed pseudonym, stored as text
    GENERALIZE = enum.auto()  # coarsened by the column's rule, stored as text, then checked for k-anonymity
    KEEP = enum.auto()  # stored as declared, once its values have the declared type
    # Replaced by the platform-wide linkage pseudonym (the same person at every hospital gets the
    # same one), stored as text; the identifier itself is never stored. Not the privacy unit: a
    # cohort counts linked rows as one person (cleanroom.domain.cohort.unit_key).
    LINK = enum.auto()
    # Streams: epoch seconds, shifted per patient by a secret whole-day offset and floored to the
    # stream's resolution (cleanroom.domain.streams.StreamSpec), stored as int64.
    SHIFT = enum.auto()


@dataclass(frozen=True)
class RoleSpec:
    """Everything that depends on a column's role."""

    treatment: Treatment
    privacy_unit: bool = False  # the patient: exactly one such column, whose pseudonym bounds each contribution
    categories: bool = False  # may declare the public list of the values it holds
    label_classes: bool = False  # may declare classification classes
    stream_only: bool = False  # only a stream dataset (cleanroom.domain.streams) declares it

    @property
    def stored(self) -> bool:
        """The column is in the stored schema (under its name; its values as the treatment leaves them)."""
        return self.treatment is not Treatment.DROP

    @property
    def stored_as_text(self) -> bool:
        """Whatever type the owner declared, the stored values are text (pseudonyms, generalised labels)."""
        return self.treatment in (Treatment.PSEUDONYMIZE, Treatment.GENERALIZE, Treatment.LINK)

    @property
    def scanned_for_identifiers(self) -> bool:
        """Its values reach storage as given or coarsened, so stray identifiers in them are refused."""
        return self.treatment in (Treatment.GENERALIZE, Treatment.KEEP)


ROLE_SPECS: dict[ColumnRole, RoleSpec] = {
    ColumnRole.DIRECT_IDENTIFIER: RoleSpec(Treatment.DROP),
    ColumnRole.PATIENT_KEY: RoleSpec(Treatment.PSEUDONYMIZE, privacy_unit=True),
    ColumnRole.QUASI_IDENTIFIER: RoleSpec(Treatment.GENERALIZE),
    ColumnRole.FEATURE: RoleSpec(Treatment.KEEP, categories=True),
    ColumnRole.LABEL: RoleSpec(Treatment.KEEP, categories=True, label_classes=True),
    ColumnRole.LINKAGE_ID: RoleSpec(Treatment.LINK),
    ColumnRole.TIME: RoleSpec(Treatment.SHIFT, stream_only=True),
    ColumnRole.UNIT: RoleSpec(Treatment.DROP, stream_only=True),
}


NUMERIC_TYPES = frozenset({ColumnType.INTEGER, ColumnType.FLOAT})


@dataclass(frozen=True)
class AgeBand:
    """Ages become bands of `width` years ("40-49"); ages at or above `top_code` become "90+"."""

    width: int
    top_code: int = 90

    def describe(self) -> str:
        return f"age band of {self.width} years, {self.top_code}+"

    def labels(self) -> list[str]:
        """Every band this rule can produce, in order: public, since it follows from the rule alone."""
        bands = []
        for lower in range(0, self.top_code, self.width):
            upper = min(lower + self.width - 1, self.top_code - 1)
            bands.append(str(lower) if lower == upper else f"{lower}-{upper}")
        return [*bands, f"{self.top_code}+"]


@dataclass(frozen=True)
class DateTruncation:
    """Dates keep only their month ("2024-03") or year ("2024")."""

    precision: Literal["month", "year"]

    def describe(self) -> str:
        return f"date truncated to the {self.precision}"


@dataclass(frozen=True)
class PrefixTruncation:
    """Keeps the first `keep` characters and masks the rest with "*" ("06236" -> "062**")."""

    keep: int

    def describe(self) -> str:
        return f"first {self.keep} characters kept, the rest masked"


@dataclass(frozen=True)
class Suppress:
    """Every value, missing ones included, becomes "*"."""

    def describe(self) -> str:
        return "suppressed: every value replaced by *"


Generalization = AgeBand | DateTruncation | PrefixTruncation | Suppress

# Which declared types each rule can coarsen.
_RULE_TYPES: dict[type, frozenset[ColumnType]] = {
    AgeBand: NUMERIC_TYPES,
    DateTruncation: frozenset({ColumnType.DATE, ColumnType.STRING}),
    PrefixTruncation: frozenset({ColumnType.STRING, ColumnType.INTEGER}),
    Suppress: frozenset(ColumnType),
}
_PATIENT_KEY_TYPES = frozenset({ColumnType.INTEGER, ColumnType.STRING})
_MAX_NAME_LENGTH = 256


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: ColumnType
    role: ColumnRole
    generalization: Generalization | None = None
    # LABEL columns of a classification dataset: values are integers 0..label_classes-1
    # (booleans 0/1), checked at intake; 0 = not declared.
    label_classes: int = 0
    # FEATURE or LABEL columns (INTEGER or STRING): the data owner's public list of the values the
    # column may hold, as text ("0", "1"), checked at intake; () = not declared. A public key space:
    # statistics group by it without a threshold, since the keys come from here, never the data.
    categories: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeidPolicy:
    """A validated policy: build it with validate_policy, never directly from user input."""

    columns: tuple[ColumnSpec, ...]
    k: int

    def column(self, name: str) -> ColumnSpec:
        return next(c for c in self.columns if c.name == name)

    def with_role(self, role: ColumnRole) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.columns if c.role is role)

    def treated(self, treatment: Treatment) -> tuple[ColumnSpec, ...]:
        return tuple(c for c in self.columns if c.role.spec.treatment is treatment)

    @property
    def patient_key(self) -> ColumnSpec:
        return [c for c in self.columns if c.role.spec.privacy_unit][0]

    @property
    def linkage(self) -> ColumnSpec | None:
        """The declared linkage column, if any (validation allows at most one)."""
        found = self.treated(Treatment.LINK)
        return found[0] if found else None

    @property
    def quasi_identifiers(self) -> tuple[ColumnSpec, ...]:
        """The generalised columns, whose combinations must each hold at least k patients."""
        return self.treated(Treatment.GENERALIZE)


def validate_policy(columns: tuple[ColumnSpec, ...] | list[ColumnSpec], k: int, *, stream: bool = False) -> DeidPolicy:
    """Checks every rule, collects every violation, and raises them together (or returns).
    `stream`: the columns are a stream's (cleanroom.domain.streams checks the stream's own rules)."""
    columns = tuple(columns)
    violations = _name_violations(columns)
    for column in columns:
        violations += _column_violations(column)
    violations += _patient_key_violations(columns)
    violations += _linkage_violations(columns)
    violations += _k_violations(k)
    if not stream:
        violations += _stream_only_violations(columns)
    if violations:
        raise bad_request("the de-identification policy is invalid", *violations)
    return DeidPolicy(columns=columns, k=k)


def _stream_only_violations(columns: tuple[ColumnSpec, ...]) -> list[FieldViolation]:
    violations = [FieldViolation(_field(c), f"only a stream dataset declares a {c.role.name} column")
                  for c in columns if (spec := _role_spec(c)) is not None and spec.stream_only]
    violations += [FieldViolation(_field(c), "only a stream dataset's TIME column is a TIMESTAMP")
                   for c in columns if c.type is ColumnType.TIMESTAMP]
    return violations


def _field(column: ColumnSpec) -> str:
    return f"columns[{column.name}]"


def _name_violations(columns: tuple[ColumnSpec, ...]) -> list[FieldViolation]:
    if not columns:
        return [FieldViolation("columns", "at least one column must be declared")]
    violations, seen = [], set()
    for index, column in enumerate(columns):
        name = column.name
        if not isinstance(name, str) or not name.strip():
            violations.append(FieldViolation(f"columns[{index}]", "the column name is empty"))
        elif len(name) > _MAX_NAME_LENGTH:
            violations.append(FieldViolation(f"columns[{index}]", "the column name is too long"))
        elif name in seen:
            violations.append(FieldViolation(_field(column), "the column is declared twice"))
        seen.add(name)
    return violations


def _role_spec(column: ColumnSpec) -> RoleSpec | None:
    """The column's role spec; None while the role is unspecified (validation reports that)."""
    return column.role.spec if isinstance(column.role, ColumnRole) else None


def _column_violations(column: ColumnSpec) -> list[FieldViolation]:
    violations: list[FieldViolation] = []
    if not isinstance(column.type, ColumnType):
        violations.append(FieldViolation(_field(column), "the column type is unspecified"))
    if not isinstance(column.role, ColumnRole):
        violations.append(FieldViolation(_field(column), "the column role is unspecified"))
    return (violations + _generalization_violations(column) + _label_classes_violations(column)
            + _categories_violations(column))


# The types whose values can be class indices (booleans as 0/1).
CLASS_LABEL_TYPES = frozenset({ColumnType.INTEGER, ColumnType.BOOLEAN})


def _label_classes_violations(column: ColumnSpec) -> list[FieldViolation]:
    classes, field = column.label_classes, f"{_field(column)}.label_classes"
    if not _is_int(classes) or not 0 <= classes <= MAX_LABEL_CLASSES:
        return [FieldViolation(field, f"must be between 0 (not declared) and {MAX_LABEL_CLASSES}")]
    if classes == 0:
        return []
    spec = _role_spec(column)
    if spec is None or not spec.label_classes:
        return [FieldViolation(field, "only LABEL columns declare classes")]
    if isinstance(column.type, ColumnType) and column.type not in CLASS_LABEL_TYPES:
        return [FieldViolation(field, f"class labels are INTEGER or BOOLEAN, not {column.type.name}")]
    return []


CATEGORY_TYPES = frozenset({ColumnType.INTEGER, ColumnType.STRING})
# How Arrow writes an int64 as text, so that declared keys match the stored values cast to text.
_PLAIN_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]{0,18})")


def _categories_violations(column: ColumnSpec) -> list[FieldViolation]:
    categories, field = column.categories, f"{_field(column)}.categories"
    if not categories:
        return []
    if not isinstance(categories, tuple) or len(categories) > MAX_CATEGORIES:
        return [FieldViolation(field, f"at most {MAX_CATEGORIES} categories")]
    spec = _role_spec(column)
    if spec is None or not spec.categories:
        return [FieldViolation(field, "only FEATURE or LABEL columns declare categories")]
    if isinstance(column.type, ColumnType) and column.type not in CATEGORY_TYPES:
        return [FieldViolation(field, f"categories are declared for INTEGER or STRING columns, not {column.type.name}")]
    if len(set(categories)) != len(categories):
        return [FieldViolation(field, "a category is declared twice")]
    if column.type is ColumnType.INTEGER and not all(_is_plain_integer(c) for c in categories):
        return [FieldViolation(field, "an INTEGER column's categories are whole numbers written plainly (0, 1, -2)")]
    if not all(isinstance(c, str) and 0 < len(c) <= MAX_CATEGORY_LENGTH for c in categories):
        return [FieldViolation(field, f"each category is 1 to {MAX_CATEGORY_LENGTH} characters of text")]
    return []


def _is_plain_integer(text: object) -> bool:
    return isinstance(text, str) and _PLAIN_INTEGER.fullmatch(text) is not None and -2**63 <= int(text) < 2**63


def _generalization_violations(column: ColumnSpec) -> list[FieldViolation]:
    rule, field = column.generalization, _field(column)
    spec = _role_spec(column)
    is_qi = spec is not None and spec.treatment is Treatment.GENERALIZE
    if rule is None:
        return [FieldViolation(field, "a quasi-identifier needs a generalization")] if is_qi else []
    if not is_qi:
        return [FieldViolation(field, "only quasi-identifiers may have a generalization")]
    if type(rule) not in _RULE_TYPES:
        return [FieldViolation(field, "unknown generalization")]
    violations = _rule_parameter_violations(rule, field)
    allowed = _RULE_TYPES[type(rule)]
    if isinstance(column.type, ColumnType) and column.type not in allowed:
        kinds = " or ".join(sorted(t.name for t in allowed))
        message = f"{type(rule).__name__} applies to {kinds} columns, not {column.type.name}"
        violations.append(FieldViolation(field, message))
    return violations


def _rule_parameter_violations(rule: Generalization, field: str) -> list[FieldViolation]:
    if isinstance(rule, AgeBand):
        problems = [(not _is_int(rule.width) or rule.width < 1, "the age band width must be ≥ 1"),
                    (not _is_int(rule.top_code) or rule.top_code < 1, "the top code must be ≥ 1")]
    elif isinstance(rule, DateTruncation):
        problems = [(rule.precision not in ("month", "year"), "precision must be month or year")]
    elif isinstance(rule, PrefixTruncation):
        problems = [(not _is_int(rule.keep) or rule.keep < 0, "keep must be ≥ 0")]
    else:
        problems = []
    return [FieldViolation(field, message) for failed, message in problems if failed]


def _patient_key_violations(columns: tuple[ColumnSpec, ...]) -> list[FieldViolation]:
    keys = [c for c in columns if (spec := _role_spec(c)) is not None and spec.privacy_unit]
    if len(keys) != 1:
        message = f"exactly one column must have role PATIENT_KEY; {len(keys)} do"
        return [FieldViolation("columns", message)]
    key = keys[0]
    if isinstance(key.type, ColumnType) and key.type not in _PATIENT_KEY_TYPES:
        return [FieldViolation(_field(key), "a patient key must be INTEGER or STRING")]
    return []


def _linkage_violations(columns: tuple[ColumnSpec, ...]) -> list[FieldViolation]:
    """At most one linkage column, INTEGER or STRING, and only beside a patient key: linkage joins
    patients of several hospitals, so each row must first belong to a patient of its own."""
    links = [c for c in columns if (spec := _role_spec(c)) is not None and spec.treatment is Treatment.LINK]
    if not links:
        return []
    if len(links) > 1:
        return [FieldViolation("columns", f"at most one column may have role LINKAGE_ID; {len(links)} do")]
    link, violations = links[0], []
    if isinstance(link.type, ColumnType) and link.type not in _PATIENT_KEY_TYPES:
        violations.append(FieldViolation(_field(link), "a linkage identifier must be INTEGER or STRING"))
    if not any((spec := _role_spec(c)) is not None and spec.privacy_unit for c in columns):
        violations.append(FieldViolation(_field(link), "a linkage identifier needs a PATIENT_KEY column beside it"))
    return violations


def linkage_column(columns: Iterable[ColumnSpec]) -> str | None:
    """The name of a dataset's linkage column (its stored linkage pseudonyms), or None when the
    hospital declared none: its patients are then distinct privacy units from every other's."""
    return next((c.name for c in columns if c.role.spec.treatment is Treatment.LINK), None)


NO_LINKAGE_NOTE = "no linkage column declared: patients of this dataset are distinct privacy units from every other hospital's"


def _k_violations(k: int) -> list[FieldViolation]:
    if not _is_int(k) or not MIN_K <= k <= MAX_K:
        return [FieldViolation("policy.k_anonymity", f"k must be between {MIN_K} and {MAX_K}")]
    return []


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def stored_columns(policy: DeidPolicy) -> tuple[ColumnSpec, ...]:
    """The schema after de-identification, in declared order, direct identifiers dropped."""
    return stored_schema(policy.columns)


def stored_as_labels(column: ColumnSpec) -> str | None:
    """Why a generalised quasi-identifier is no number any more (None for every other column):
    intake stores its generalised values as text labels, whatever type the owner declared."""
    rule = column.generalization
    if column.role.spec.treatment is not Treatment.GENERALIZE or rule is None:
        return None
    labels = "age-band labels" if isinstance(rule, AgeBand) else "text labels"
    return f"{column.name} is a quasi-identifier stored as {labels} ({rule.describe()}), not as numbers"


def stored_schema(columns: Iterable[ColumnSpec]) -> tuple[ColumnSpec, ...]:
    """Declared columns as stored: direct identifiers dropped, pseudonyms and generalised values as text."""
    stored = []
    for column in columns:
        spec = column.role.spec
        if not spec.stored:
            continue
        stored.append(replace(column, type=ColumnType.STRING) if spec.stored_as_text else column)
    return tuple(stored)


# Patterns (RE2 syntax, for pyarrow.compute) of identifiers that must not hide in ordinary
# columns. The boundaries refuse a neighbouring digit and a decimal point before the number,
# so plain decimals, ISO dates and long measurement strings do not match.
_START = r"(?:^|[^0-9.]|[^0-9]\.)"
_END = r"(?:$|[^0-9])"
_SEP = r"[-. ]?"
# YYMMDD, then the sex/century digit: 1-4 for citizens, 5-8 for registered foreigners.
_RRN = r"[0-9]{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])[- ]?[1-8][0-9]{6}"
_KR_MOBILE = rf"01[016789]{_SEP}[0-9]{{3,4}}{_SEP}[0-9]{{4}}"
_KR_LANDLINE = r"(?:0(?:2|[3-6][1-5])[-. ]|\(0(?:2|[3-6][1-5])\) ?)[0-9]{3,4}[-. ][0-9]{4}"
_KR_INTERNATIONAL = (rf"\+82{_SEP}(?:\(0\))?0?(?:1[016789]|2|[3-6][1-5])"
                     rf"{_SEP}[0-9]{{3,4}}{_SEP}[0-9]{{4}}")
_INTERNATIONAL = (rf"\+[1-9][0-9]{{0,2}}{_SEP}(?:\(?[0-9]{{1,4}}\)?{_SEP})?"
                  rf"[0-9]{{2,4}}{_SEP}[0-9]{{3,4}}(?:{_SEP}[0-9]{{2,4}})?")
_EMAIL = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"

# (kind shown to the user, pattern)
IDENTIFIER_PATTERNS: tuple[tuple[str, str], ...] = (
    ("Korean resident registration numbers", f"{_START}{_RRN}{_END}"),
    ("phone numbers", f"{_START}(?:{_KR_MOBILE}|{_KR_LANDLINE}){_END}"
                      f"|(?:{_KR_INTERNATIONAL}|{_INTERNATIONAL}){_END}"),
    ("e-mail addresses", _EMAIL),
)
