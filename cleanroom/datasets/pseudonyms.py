"""Keyed pseudonyms at intake: a hospital's patient pseudonyms, the platform-wide linkage
pseudonyms, and the check that a patient's rows agree on their linkage identifier. Vectorised
with pyarrow.compute; the only Python loop runs over the distinct values of a batch (the HMAC).
Errors name columns and rules, never a value."""

from __future__ import annotations

import hmac

import pyarrow as pa
import pyarrow.compute as pc

from cleanroom.datasets.typed import column_field
from cleanroom.domain.errors import CleanroomError, FieldViolation, bad_request

PSEUDONYM_HEX_CHARS = 32  # 128 bits of HMAC-SHA256
MIN_KEY_BYTES = 16
_EMPTY = pa.scalar("", pa.string())  # a typed scalar: pyarrow converts untyped ones slowly


class Pseudonymizer:
    """Keyed HMAC-SHA256 of each value's UTF-8 string form, hex, truncated to 32 characters.

    Remembers up to `cache_size` pseudonyms, in Arrow: one upload's batches mostly repeat the
    same patients, and a vectorised lookup is far cheaper than an HMAC (or a Python dict lookup
    per value). Use one instance per upload.
    """

    _known: pa.Array  # values, aligned with their pseudonyms
    _pseudonyms: pa.Array

    def __init__(self, key: bytes, *, cache_size: int = 1 << 18) -> None:
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the pseudonymisation key must be at least {MIN_KEY_BYTES} bytes")
        self._key = key
        self._cache_size = cache_size
        self._forget()

    def pseudonymize(self, values: pa.Array | pa.ChunkedArray) -> pa.Array:
        """One HMAC per unique value (dictionary-encode, hash the dictionary, take); nulls stay."""
        return self.pseudonymize_encoded(values).dictionary_decode()

    def pseudonymize_encoded(self, values: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
        """The pseudonyms as a dictionary array: one entry per distinct value, nulls in the indices."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        strings = values if values.type == pa.string() else pc.cast(values, pa.string())
        encoded = strings.dictionary_encode()
        return pa.DictionaryArray.from_arrays(encoded.indices, self._lookup(encoded.dictionary))

    def _lookup(self, uniques: pa.Array) -> pa.Array:
        """Pseudonyms of distinct values: cached ones looked up in Arrow, new ones HMACed."""
        if len(self._known) + len(uniques) > self._cache_size:
            self._forget()
        positions = pc.index_in(uniques, value_set=self._known)
        unknown = pc.is_null(positions)
        new = uniques.filter(unknown)
        if len(new):
            # New values go to the end of the cache, in order: their positions follow from that.
            appended = pc.add(pc.cumulative_sum(pc.cast(unknown, pa.int32())), pa.scalar(len(self._known) - 1, pa.int32()))
            positions = pc.coalesce(positions, appended)
            digests = pa.array([self._digest(v) for v in new.to_pylist()], pa.string())
            self._known = pa.concat_arrays([self._known, new])
            self._pseudonyms = pa.concat_arrays([self._pseudonyms, digests])
        return self._pseudonyms.take(positions)

    def _forget(self) -> None:
        self._known = pa.array([], pa.string())  # values, aligned with their pseudonyms
        self._pseudonyms = pa.array([], pa.string())

    def _digest(self, value: str) -> str:
        return hmac.digest(self._key, value.encode("utf-8"), "sha256").hex()[:PSEUDONYM_HEX_CHARS]


LINKAGE_PREFIX = "lnk-"  # no patient pseudonym (bare hex) can look like a linkage pseudonym
_LINKAGE_CONTEXT = b"cleanroom-linkage-id:"


def normalise_linkage_id(value: str) -> str:
    """The form a linkage identifier is keyed in: surrounding whitespace stripped (Python's
    str.strip, Unicode whitespace included), then case-folded (str.casefold), so " ab12 " and
    "AB12" link. Nothing else is changed: hospitals send the identifier in one agreed format
    (e.g. a resident registration number with its hyphen, or without it, at every site)."""
    return value.strip().casefold()


class LinkagePseudonymizer(Pseudonymizer):
    """The platform-wide linkage pseudonym: "lnk-" and a keyed HMAC-SHA256 (32 hex characters) of
    the normalised identifier, under the one linkage key only the service holds, so the same person
    gets the same pseudonym at every hospital and nobody outside the service can compute it.
    A missing or blank identifier gives "" (the row stays unlinked)."""

    def pseudonymize(self, values: pa.Array | pa.ChunkedArray) -> pa.Array:
        return pc.fill_null(super().pseudonymize(values), _EMPTY)

    def _digest(self, value: str) -> str:
        normalised = normalise_linkage_id(value)
        if not normalised:
            return ""
        digest = hmac.digest(self._key, _LINKAGE_CONTEXT + normalised.encode("utf-8"), "sha256")
        return LINKAGE_PREFIX + digest.hex()[:PSEUDONYM_HEX_CHARS]


class LinkageChecker:
    """Refuses an upload in which one patient's rows carry different linkage identifiers (an empty
    one counts as different from any other): one person split over two privacy units would escape
    the per-person bound of a cohort. Keeps each patient's linkage pseudonym seen so far, in
    Arrow (looked up once per distinct patient of a batch): memory follows patients, not rows."""

    def __init__(self, column: str) -> None:
        self._column = column
        self._patients = pa.array([], pa.string())  # aligned with their linkage pseudonyms
        self._links = pa.array([], pa.string())

    def update(self, patients: pa.Array | pa.ChunkedArray, links: pa.Array | pa.ChunkedArray) -> None:
        """`patients` and `links`: one batch's stored pseudonyms, rows without a patient removed."""
        pairs = pa.table({"patient": patients, "link": links}).group_by(["patient", "link"]).aggregate([])
        batch_patients, batch_links = pairs.column("patient").combine_chunks(), pairs.column("link").combine_chunks()
        if len(batch_patients) != pc.count_distinct(batch_patients).as_py():
            raise self._conflict()
        positions = pc.index_in(batch_patients, value_set=self._patients)
        known = pc.is_valid(positions)
        earlier = self._links.take(positions.filter(known))
        if pc.any(pc.not_equal(earlier, batch_links.filter(known))).as_py():  # null (no known patient) passes
            raise self._conflict()
        unknown = pc.invert(known)
        self._patients = pa.concat_arrays([self._patients, batch_patients.filter(unknown)])
        self._links = pa.concat_arrays([self._links, batch_links.filter(unknown)])

    def _conflict(self) -> CleanroomError:
        rule = ("a patient's rows carry different linkage identifiers (or some carry one and some "
                "none): every row of a patient must carry the same one, or all leave it empty")
        return bad_request("the linkage identifiers contradict the patient key; nothing was stored",
                           FieldViolation(column_field(self._column), rule))
