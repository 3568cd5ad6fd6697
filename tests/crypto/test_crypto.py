"""Envelope encryption: wrapped keys, KEK rotation, the sealed chunk format and pyarrow access."""

from __future__ import annotations

import gc
import hashlib
import io
import os
import re
import stat
import time

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleanroom.crypto import (
    CHUNK_SIZE,
    DATA_KEY_BYTES,
    KeyFileError,
    LocalKeyFileProvider,
    SealedReader,
    SealedWriter,
    WrappedKey,
    as_arrow_file,
    new_data_key,
    open_bytes,
    rewrap,
    seal_bytes,
)
from cleanroom.domain.errors import ErrorCode, IntegrityError

CS = 1000  # small chunk size so that multi-chunk cases stay small
HEADER = 12  # magic(8) + chunk_size(4)
FULL = 4 + 12 + CS + 16  # one full chunk on disk
KEY = bytes(range(32))


def _data(n: int) -> bytes:
    return os.urandom(n)


def _reader(sealed: bytes, key: bytes = KEY, blob_id: str = "ds1") -> SealedReader:
    return SealedReader(io.BytesIO(sealed), key, blob_id)


def _chunk(sealed: bytes, i: int) -> bytes:
    return sealed[HEADER + i * FULL : HEADER + (i + 1) * FULL]


def _flip(sealed: bytes, at: int) -> bytes:
    b = bytearray(sealed)
    b[at] ^= 0x01
    return bytes(b)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("n", [0, 1, 999, CS, CS + 1, 3 * CS, 3 * CS + 500])
def test_round_trip_sizes(n: int) -> None:
    data = _data(n)
    sealed = seal_bytes(data, KEY, "ds1", CS)
    assert open_bytes(sealed, KEY, "ds1") == data
    chunks = max(1, -(-n // CS))  # an empty blob still has its LAST chunk
    assert len(sealed) == HEADER + chunks * 32 + n


def test_round_trip_default_chunk_size() -> None:
    data, out = _data(4 * CHUNK_SIZE + 12345), io.BytesIO()
    with SealedWriter(out, KEY, "ds1") as w:
        for off in range(0, len(data), 300_000):
            w.write(data[off : off + 300_000])
    sealed = out.getvalue()
    assert len(sealed) == HEADER + 5 * 32 + len(data)
    # Large chunks are hashed on a helper thread: the digest must still cover every byte in order.
    assert w.ciphertext_sha256 == hashlib.sha256(sealed).hexdigest()
    with _reader(sealed) as r:
        assert r.size() == len(data)
        assert r.read() == data


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=4000), cs=st.integers(1, 700), cuts=st.lists(st.integers(0, 4000)))
def test_round_trip_any_size_and_write_pattern(data: bytes, cs: int, cuts: list[int]) -> None:
    out = io.BytesIO()
    w = SealedWriter(out, KEY, "ds1", cs)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for a, b in zip(bounds, bounds[1:]):
        assert w.write(data[a:b]) == b - a
    w.close()
    assert w.plaintext_bytes == len(data)
    assert w.ciphertext_sha256 == hashlib.sha256(out.getvalue()).hexdigest()
    assert open_bytes(out.getvalue(), KEY, "ds1") == data


def test_slow_hashing_never_sees_a_reused_buffer(monkeypatch) -> None:
    import cleanroom.crypto as crypto

    feed = crypto._PipelinedSha256._feed

    def slow_feed(self, parts):
        time.sleep(0.02)  # the writer encrypts the next chunks meanwhile
        feed(self, parts)

    monkeypatch.setattr(crypto._PipelinedSha256, "_feed", slow_feed)
    out, cs = io.BytesIO(), 1 << 17
    with SealedWriter(out, KEY, "ds1", cs) as w:
        w.write(_data(6 * cs))
    assert w.ciphertext_sha256 == hashlib.sha256(out.getvalue()).hexdigest()


def test_writer_streams_instead_of_buffering() -> None:
    out = io.BytesIO()
    w = SealedWriter(out, KEY, "ds1", CS)
    w.write(_data(10 * CS))
    # Nine chunks are out; the tenth waits in case it is the last.
    assert len(out.getvalue()) == HEADER + 9 * FULL
    w.close()
    assert len(out.getvalue()) == HEADER + 10 * FULL


def test_writer_accepts_memoryview_and_bytearray() -> None:
    data = _data(2500)
    out = io.BytesIO()
    with SealedWriter(out, KEY, "ds1", CS) as w:
        w.write(memoryview(data)[:1200])
        w.write(bytearray(data[1200:]))
    assert open_bytes(out.getvalue(), KEY, "ds1") == data


def test_nonces_differ_between_chunks_and_seals() -> None:
    sealed = seal_bytes(bytes(3 * CS), KEY, "ds1", CS)
    nonces = {_chunk(sealed, i)[4:16] for i in range(3)}
    assert len(nonces) == 3
    assert seal_bytes(b"x", KEY, "ds1") != seal_bytes(b"x", KEY, "ds1")


def test_canary_does_not_appear_in_sealed_output() -> None:
    data = b"patient:" + b"CANARY-123456" * 200
    sealed = seal_bytes(data, KEY, "ds1", CS)
    assert b"CANARY-123456" not in sealed
    assert open_bytes(sealed, KEY, "ds1") == data


# ----------------------------------------------------------------------------- random access


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(0, 5000),
    ops=st.lists(st.tuples(st.integers(0, 5500), st.integers(0, 2500)), max_size=8),
)
def test_random_access_matches_plaintext_slices(n: int, ops: list[tuple[int, int]]) -> None:
    data = bytes(i % 251 for i in range(n))
    with _reader(seal_bytes(data, KEY, "ds1", CS)) as r:
        assert r.size() == n
        for offset, length in ops:
            assert r.seek(offset) == offset
            assert r.read(length) == data[offset : offset + length]
            assert r.tell() == max(offset, min(offset + length, n))


def test_readinto_seek_modes_and_eof() -> None:
    data = _data(3500)
    with _reader(seal_bytes(data, KEY, "ds1", CS)) as r:
        buf = bytearray(1500)
        r.seek(900)
        assert r.readinto(buf) == 1500
        assert bytes(buf) == data[900:2400]
        assert r.seek(-100, io.SEEK_END) == 3400
        assert r.read() == data[3400:]
        assert r.seek(-3400, io.SEEK_CUR) == 100
        assert r.read(5) == data[100:105]
        r.seek(10_000)
        assert r.read(10) == b"" and r.readinto(buf) == 0
        with pytest.raises(ValueError):
            r.seek(-1)
        assert r.readable() and r.seekable() and not r.writable()


def test_reader_decrypts_lazily_but_verifies_each_chunk_it_serves() -> None:
    sealed = _flip(seal_bytes(_data(4 * CS), KEY, "ds1", CS), HEADER + 2 * FULL + 20)
    with _reader(sealed) as r:  # opens: only the last chunk is checked up front
        assert len(r.read(2 * CS)) == 2 * CS
        with pytest.raises(IntegrityError):
            r.read(1)


def test_closed_reader_refuses_io() -> None:
    r = _reader(seal_bytes(b"abc", KEY, "ds1"))
    r.close()
    with pytest.raises(ValueError):
        r.read()


# ----------------------------------------------------------------------------- tampering


def _read_all(sealed: bytes, key: bytes = KEY, blob_id: str = "ds1") -> bytes:
    with _reader(sealed, key, blob_id) as r:
        return r.read()


@pytest.mark.parametrize(
    "offset",
    [
        0,  # magic
        10,  # chunk size in the header
        HEADER + 1,  # length prefix of chunk 0
        HEADER + 6,  # nonce of chunk 0
        HEADER + 16 + 500,  # ciphertext of chunk 0
        HEADER + FULL - 3,  # tag of chunk 0
        HEADER + 2 * FULL + 30,  # ciphertext of the last chunk
        -1,  # tag of the last chunk
    ],
)
def test_any_flipped_bit_fails(offset: int) -> None:
    sealed = seal_bytes(_data(2 * CS + 300), KEY, "ds1", CS)
    with pytest.raises(IntegrityError) as info:
        _read_all(_flip(sealed, offset % len(sealed)))
    assert info.value.code is ErrorCode.INTEGRITY_ERROR


def test_swapped_chunks_fail() -> None:
    sealed = seal_bytes(_data(3 * CS + 10), KEY, "ds1", CS)
    swapped = sealed[:HEADER] + _chunk(sealed, 1) + _chunk(sealed, 0) + sealed[HEADER + 2 * FULL :]
    assert len(swapped) == len(sealed)
    with pytest.raises(IntegrityError):
        _read_all(swapped)


def test_dropped_last_chunk_fails_at_open() -> None:
    sealed = seal_bytes(_data(3 * CS + 10), KEY, "ds1", CS)
    with pytest.raises(IntegrityError):
        _reader(sealed[: HEADER + 3 * FULL])


def test_dropped_middle_chunk_fails() -> None:
    sealed = seal_bytes(_data(3 * CS + 10), KEY, "ds1", CS)
    with pytest.raises(IntegrityError):
        _read_all(sealed[: HEADER + FULL] + sealed[HEADER + 2 * FULL :])


@pytest.mark.parametrize("cut", [1, 16, 17, 40])
def test_truncated_bytes_fail(cut: int) -> None:
    sealed = seal_bytes(_data(2 * CS + 100), KEY, "ds1", CS)
    with pytest.raises(IntegrityError):
        _read_all(sealed[:-cut])


def test_data_after_last_chunk_fails() -> None:
    sealed = seal_bytes(_data(2 * CS), KEY, "ds1", CS)
    with pytest.raises(IntegrityError):
        _reader(sealed + _chunk(sealed, 1))  # a valid chunk, replayed after LAST
    with pytest.raises(IntegrityError):
        _reader(sealed + b"\x00")


@pytest.mark.parametrize(
    "sealed", [b"", b"CRSEAL1\n", b"CRSEAL1\n\x00\x00\x03\xe8", b"NOTSEAL\n" * 4]
)
def test_bad_or_empty_files_fail(sealed: bytes) -> None:
    with pytest.raises(IntegrityError):
        _reader(sealed)


def test_wrong_blob_id_fails() -> None:
    sealed = seal_bytes(_data(1500), KEY, "ds1", CS)
    with pytest.raises(IntegrityError):
        _read_all(sealed, blob_id="ds2")


def test_wrong_data_key_fails() -> None:
    sealed = seal_bytes(_data(1500), KEY, "ds1", CS)
    with pytest.raises(IntegrityError):
        _read_all(sealed, key=new_data_key())


def test_aborted_writer_leaves_an_unreadable_stream() -> None:
    out = io.BytesIO()
    with pytest.raises(RuntimeError):
        with SealedWriter(out, KEY, "ds1", CS) as w:
            w.write(_data(2 * CS + 5))
            raise RuntimeError("upload broke")
    assert w.closed and len(out.getvalue()) == HEADER + 2 * FULL
    with pytest.raises(IntegrityError):
        _reader(out.getvalue())


def test_writer_stops_for_good_after_a_sink_error() -> None:
    class Flaky(io.BytesIO):
        def write(self, b):
            if self.tell() > HEADER + FULL:
                raise OSError("disk full")
            return super().write(b)

    out = Flaky()
    w = SealedWriter(out, KEY, "ds1", CS)
    with pytest.raises(OSError):
        w.write(_data(5 * CS))
    assert w.closed
    with pytest.raises(ValueError):
        w.write(b"more")
    with pytest.raises(IntegrityError):
        _reader(out.getvalue())


def test_garbage_collected_writer_does_not_seal() -> None:
    out = io.BytesIO()
    w = SealedWriter(out, KEY, "ds1", CS)
    w.write(_data(CS + 5))
    del w
    gc.collect()
    with pytest.raises(IntegrityError):
        _reader(out.getvalue())


def test_bad_parameters_rejected() -> None:
    with pytest.raises(ValueError):
        SealedWriter(io.BytesIO(), b"short", "ds1")
    with pytest.raises(ValueError):
        SealedWriter(io.BytesIO(), KEY, "ds1", chunk_size=0)
    assert len(new_data_key()) == DATA_KEY_BYTES and new_data_key() != new_data_key()


# ----------------------------------------------------------------------------- wrapped keys


@pytest.fixture
def provider(tmp_path) -> LocalKeyFileProvider:
    return LocalKeyFileProvider(tmp_path)


def test_wrap_unwrap_and_serialise(provider: LocalKeyFileProvider) -> None:
    dk = new_data_key()
    wrapped = provider.wrap(dk, context=b"ds1")
    assert wrapped.key_id == provider.current_key_id()
    assert re.fullmatch(r"kek-[0-9a-f]{8}", wrapped.key_id)
    assert dk not in wrapped.blob and dk not in wrapped.to_bytes()
    again = WrappedKey.from_bytes(wrapped.to_bytes())
    assert again == wrapped
    assert provider.unwrap(again, context=b"ds1") == dk


def test_wrapped_key_bound_to_context(provider: LocalKeyFileProvider) -> None:
    wrapped = provider.wrap(new_data_key(), context=b"ds1")
    with pytest.raises(IntegrityError):
        provider.unwrap(wrapped, context=b"ds2")


@pytest.mark.parametrize("at", [0, 1, 5, 20, -1])
def test_tampered_wrapped_key_fails(provider: LocalKeyFileProvider, at: int) -> None:
    raw = provider.wrap(new_data_key(), context=b"ds1").to_bytes()
    with pytest.raises(IntegrityError):
        provider.unwrap(WrappedKey.from_bytes(_flip(raw, at % len(raw))), context=b"ds1")


def test_rotation_rewrap_and_retire(provider: LocalKeyFileProvider) -> None:
    dk = new_data_key()
    old = provider.wrap(dk, context=b"ds1")
    new_id = provider.rotate()
    assert new_id != old.key_id and provider.current_key_id() == new_id
    assert provider.unwrap(old, context=b"ds1") == dk  # old KEK still usable
    moved = rewrap(provider, old, context=b"ds1")
    assert moved.key_id == new_id
    provider.retire(old.key_id)
    with pytest.raises(IntegrityError):
        provider.unwrap(old, context=b"ds1")
    assert provider.unwrap(moved, context=b"ds1") == dk


def test_current_kek_cannot_be_retired(provider: LocalKeyFileProvider) -> None:
    with pytest.raises(ValueError):
        provider.retire(provider.current_key_id())
    assert provider.wrap(new_data_key(), context=b"x").key_id == provider.current_key_id()


def test_keys_persist_across_instances(tmp_path) -> None:
    dk = new_data_key()
    first = LocalKeyFileProvider(tmp_path)
    wrapped = first.wrap(dk, context=b"ds1")
    first.rotate()
    second = LocalKeyFileProvider(tmp_path)
    assert second.current_key_id() == first.current_key_id()
    assert second.unwrap(wrapped, context=b"ds1") == dk


def test_key_file_permissions(provider: LocalKeyFileProvider, tmp_path) -> None:
    provider.current_key_id()
    assert stat.S_IMODE(os.stat(provider.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o700
    provider.rotate()  # rewritten atomically, still 0600
    assert stat.S_IMODE(os.stat(provider.path).st_mode) == 0o600
    assert [p.name for p in (tmp_path / "keys").iterdir() if p.suffix == ".tmp"] == []


def test_world_readable_key_file_refused(provider: LocalKeyFileProvider, tmp_path) -> None:
    provider.current_key_id()
    os.chmod(provider.path, 0o644)
    with pytest.raises(KeyFileError) as info:
        LocalKeyFileProvider(tmp_path).current_key_id()
    assert "chmod 600" in info.value.message


def test_malformed_wrapped_key_bytes() -> None:
    bad = [b"", b"\x02\x03abc" + bytes(60), b"\x01\x00" + bytes(60), b"\x01\x03abc" + bytes(5)]
    for raw in bad:
        with pytest.raises(IntegrityError):
            WrappedKey.from_bytes(raw)


# ----------------------------------------------------------------------------- pyarrow


def _table(rows: int = 20_000) -> pa.Table:
    return pa.table({"id": pa.array(range(rows)), "name": [f"p{i}" for i in range(rows)]})


def test_arrow_ipc_stream_round_trip() -> None:
    table, out = _table(), io.BytesIO()
    with SealedWriter(out, KEY, "ds1", 4096) as w:
        with ipc.new_stream(w, table.schema) as stream:
            stream.write_table(table)
    assert b"p19999" not in out.getvalue()
    with _reader(out.getvalue()) as r:
        assert ipc.open_stream(r).read_all().equals(table)


@pytest.mark.parametrize("wrap", [False, True])
def test_parquet_round_trip_with_random_access(wrap: bool) -> None:
    table, out = _table(), io.BytesIO()
    with SealedWriter(out, KEY, "ds1", 4096) as w:
        pq.write_table(table, w, row_group_size=5000)
    with _reader(out.getvalue()) as r:
        pf = pq.ParquetFile(as_arrow_file(r) if wrap else r)
        assert pf.metadata.num_row_groups == 4
        assert pf.read_row_group(2, columns=["name"]).column(0).to_pylist()[0] == "p10000"
        assert pf.read().equals(table)
