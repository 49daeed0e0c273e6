"""Turn the dataset's [start, continuation] pairs into a flat list of chunks, without copying.

    from split_and_append_chunks import split_and_append_chunks
    pairs = np.load("dataset/training_set.npy", mmap_mode="r")   # (N, 2, C, T)
    chunks = split_and_append_chunks(pairs)                      # (2N, C, T), a view of the same memory
"""

import numpy as np


def split_and_append_chunks(pairs):
    """(N, 2, C, T) pairs -> (2N, C, T) chunks: pair i gives chunks 2i and 2i+1. A view, never a copy.

    Works on numpy arrays, memory-mapped ones included (the result stays memory-mapped), and on torch
    tensors. An input whose memory layout cannot be reshaped without a copy is an error: copying a
    memory-mapped training set would pull all of it into RAM.
    """
    if pairs.ndim != 4 or pairs.shape[1] != 2:
        raise ValueError(f"expected pairs shaped (N, 2, channels, samples), got shape {tuple(pairs.shape)}")
    n_pairs, _, channels, samples = pairs.shape
    if isinstance(pairs, np.ndarray):
        chunks = pairs.view()
        try:
            chunks.shape = (2 * n_pairs, channels, samples)  # raises instead of copying
        except AttributeError as e:
            raise ValueError("pairs are not laid out contiguously, so no view can be made; "
                             "pass the array as np.load gives it") from e
        return chunks
    return pairs.view(2 * n_pairs, channels, samples)  # torch: view() raises rather than copy
