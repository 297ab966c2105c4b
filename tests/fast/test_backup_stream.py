"""The hand-over between the dump's writer and the upload: bounded memory, exact chunks, failures passed back."""

import threading

import pytest

from dbpromote.backup_stream import Cancelled, Chunks


def in_thread(work) -> threading.Event:
    done = threading.Event()
    threading.Thread(target=lambda: (work(), done.set()), daemon=True).start()
    return done


def test_the_writer_holds_one_chunk_beside_the_one_uploading_and_the_upload_reads_exact_chunks():
    chunks = Chunks(4)
    wrote = in_thread(lambda: chunks.write(b"aaaabbbbcc"))
    # "aaaa" is handed over and not taken yet: the writer waits rather than filling a second chunk.
    assert not wrote.wait(0.3) and chunks.filling.tell() == 0
    assert chunks.read(4) == b"aaaa"  # the upload takes it; "bbbb" is filled while "aaaa" uploads
    assert not wrote.wait(0.3)
    assert chunks.read(4) == b"bbbb"
    assert wrote.wait(5) and chunks.filling.getvalue() == b"cc"
    finished = in_thread(chunks.finish)
    assert chunks.read(4) == b"cc" and finished.wait(5)  # shorter than a chunk: the upload knows it is the last
    assert chunks.tell() == 10


def test_an_upload_failure_stops_the_writer_and_a_cancel_stops_the_upload():
    chunks = Chunks(4)
    errors = []

    def write():
        try:
            chunks.write(b"aaaa")
        except OSError as error:
            errors.append(error)

    wrote = in_thread(write)
    chunks.failed = ConnectionResetError("gave up")  # what the upload thread records when it stops
    assert wrote.wait(5) and isinstance(errors[0], ConnectionResetError)

    chunks.cancel()  # the dump side gave up: the upload's next read raises, so the object is never finalised
    with pytest.raises(Cancelled):
        chunks.read(4)
