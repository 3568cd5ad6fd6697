"""A guard around atheris 2.3.0's bytecode instrumentation, which miscompiles some functions on
Python 3.11: when a backward jump grows an EXTENDED_ARG, its target can land one instruction late
(seen on readers._read_header: the loop's jump skipped `LOAD_FAST pending` and the interpreter
crashed with SIGSEGV, a crash of the fuzzer, not of the code under test).

Every instrumented code object is checked here: each jump must still land on the instruction it
landed on before (after skipping the coverage call atheris inserts at a block's start). A code
object that fails keeps its original bytecode: it runs correctly, only without coverage feedback.
`SKIPPED` names them, and the harness prints the count.
"""

from __future__ import annotations

import dis
import types
from typing import Any

import atheris.instrument_bytecode as instrument_bytecode

_original_patch_code = instrument_bytecode.patch_code
SKIPPED: list[str] = []


def _jumps(code: types.CodeType) -> list[dis.Instruction]:
    return [i for i in dis.get_instructions(code) if i.opcode in dis.hasjrel or i.opcode in dis.hasjabs]


def _is_atheris_const(instruction: dis.Instruction) -> bool:
    return instruction.opname == "LOAD_CONST" and getattr(instruction.argval, "__name__", "") == "atheris"


def _landing(listing: list[dis.Instruction], offset: int) -> tuple[str, Any]:
    """The instruction a jump to `offset` executes first, skipping an inserted coverage call."""
    index = next(i for i, instruction in enumerate(listing) if instruction.offset == offset)
    while index + 1 < len(listing) and listing[index].opname == "PUSH_NULL" and _is_atheris_const(listing[index + 1]):
        while listing[index].opname != "POP_TOP":
            index += 1
        index += 1
    return listing[index].opname, repr(listing[index].argval)


def jumps_preserved(original: types.CodeType, patched: types.CodeType) -> bool:
    before, after = _jumps(original), _jumps(patched)
    if len(before) != len(after):
        return True  # atheris added jumps of its own (dataflow tracing): not comparable, trusted
    old, new = list(dis.get_instructions(original)), list(dis.get_instructions(patched))
    for a, b in zip(before, after):
        try:
            if _landing(old, a.argval) != _landing(new, b.argval):
                return False
        except (StopIteration, IndexError):
            return False
    return True


def checked_patch_code(code: types.CodeType, trace_dataflow: bool, nested: bool = False) -> types.CodeType:
    patched: types.CodeType = _original_patch_code(code, trace_dataflow, nested)
    if jumps_preserved(code, patched):
        return patched
    SKIPPED.append(f"{code.co_filename}:{code.co_firstlineno} {code.co_name}")
    return code


def install() -> None:
    """Route atheris's instrumentation (import hooks and its own recursion) through the check."""
    instrument_bytecode.patch_code = checked_patch_code
    import atheris.import_hook

    atheris.import_hook.patch_code = checked_patch_code  # type: ignore[attr-defined]
