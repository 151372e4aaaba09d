/*
 * oramstore: the untrusted side of an enclave's ORAM storage interface (its OCALLs), as a C
 * library. `make clib` builds target/release/liboramstore.so and liboramstore.a.
 *
 * The contract:
 *
 * - Sizes (data_size, meta_size) are in bytes, nonzero multiples of 8. Buffer lengths
 *   (idx_len, databuf_len, metabuf_len) are counts of uint64_t words: a batch of n indices
 *   takes n * data_size / 8 words of data and n * meta_size / 8 words of metadata.
 * - An id is a key of a handle table, never a pointer, and 0 means failure: a failed
 *   allocate_oram_storage writes 0 to *id. Ids are never reused, and an id that is 0, was never
 *   issued or was released is reported (ORAM_STORAGE_ERROR_UNKNOWN_ID), not dereferenced. Ids
 *   may be used from any thread.
 * - Metadata reads as zero until it is written; data never written may read as anything.
 * - The functions return nothing. A call that fails writes nothing to the caller's buffers and
 *   records its error for the calling thread: oram_storage_last_error() returns its code, an
 *   OramStorageError, and oram_storage_last_error_message() its text. The next successful call
 *   on that thread sets the code back to ORAM_STORAGE_ERROR_OK. Each thread has its own last
 *   error.
 * - Every argument is checked before a byte moves: ids, sizes, indices (below the count, and
 *   distinct in a checkin), buffer lengths against the batch, null pointers with a nonzero
 *   length, alignment to 8 bytes, lengths over PTRDIFF_MAX bytes, and overlaps between a
 *   checkout's idx, databuf and metabuf. What cannot be checked is the caller's promise: a
 *   pointer with a nonzero length is valid for that many words.
 */


#ifndef ORAMSTORE_H
#define ORAMSTORE_H

/* Generated with cbindgen:0.29.4 */

/* Do not edit: generated from rust/ocall.rs by `make header`. */

#include <stddef.h>
#include <stdint.h>

/**
 * Error codes recorded by the OCALL functions.
 */
enum OramStorageError
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : int32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  /**
   * The last call succeeded.
   */
  ORAM_STORAGE_ERROR_OK = 0,
  /**
   * The id is 0, was never issued, or was released.
   */
  ORAM_STORAGE_ERROR_UNKNOWN_ID = 1,
  /**
   * A size is zero, not a multiple of 8, or too large.
   */
  ORAM_STORAGE_ERROR_BAD_SIZE = 2,
  /**
   * A buffer length does not match the batch or is more than `isize::MAX` (`PTRDIFF_MAX`)
   * bytes, a pointer is null with a nonzero length or not aligned to 8 bytes, or a checkout's
   * output buffers overlap each other or `idx`.
   */
  ORAM_STORAGE_ERROR_BAD_BUFFER = 3,
  /**
   * An index is not below the storage's count.
   */
  ORAM_STORAGE_ERROR_INDEX_OUT_OF_RANGE = 4,
  /**
   * An index appears twice in one checkin.
   */
  ORAM_STORAGE_ERROR_DUPLICATE_INDEX = 5,
  /**
   * The kernel refused the memory.
   */
  ORAM_STORAGE_ERROR_OUT_OF_MEMORY = 6,
  /**
   * The output id pointer is null.
   */
  ORAM_STORAGE_ERROR_NULL_ID = 7,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum OramStorageError OramStorageError;
#else
typedef int32_t OramStorageError;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * Allocates a storage of `count` items of `data_size` + `meta_size` bytes (nonzero multiples of
 * 8) and writes its id to `*id`, or 0 if it cannot. Ids are never 0 and never reused.
 *
 * # Safety
 *
 * `id` must be null, which is reported, or valid for writing one `uint64_t`.
 */
void allocate_oram_storage(uint64_t count, uint64_t data_size, uint64_t meta_size, uint64_t *id);

/**
 * Releases the storage with this id; the id is invalid from then on. Copies in progress on
 * other threads finish first.
 */
void release_oram_storage(uint64_t id);

/**
 * Copies the items at the `idx_len` indices `idx` into `databuf` and `metabuf`: item `k` of
 * the batch to word `k * data_size / 8` of `databuf` and `k * meta_size / 8` of `metabuf`. An
 * index may repeat. `databuf_len` must be `idx_len * data_size / 8` and `metabuf_len`
 * `idx_len * meta_size / 8`.
 *
 * Lengths, null pointers, alignment and overlaps between `idx`, `databuf` and `metabuf` are
 * checked before anything is read or written.
 *
 * # Safety
 *
 * Each pointer with a nonzero length must be valid for that many `uint64_t` words: reads for
 * `idx`, writes for `databuf` and `metabuf`.
 */
void checkout_oram_storage(uint64_t id,
                           const uint64_t *idx,
                           size_t idx_len,
                           uint64_t *databuf,
                           size_t databuf_len,
                           uint64_t *metabuf,
                           size_t metabuf_len);

/**
 * Copies item `k` of `databuf` and `metabuf` (laid out as for `checkout_oram_storage`) to the
 * item at `idx[k]`, for the `idx_len` indices `idx`, which must be distinct. The inputs may
 * overlap each other.
 *
 * # Safety
 *
 * Each pointer with a nonzero length must be valid for reading that many `uint64_t` words.
 */
void checkin_oram_storage(uint64_t id,
                          const uint64_t *idx,
                          size_t idx_len,
                          const uint64_t *databuf,
                          size_t databuf_len,
                          const uint64_t *metabuf,
                          size_t metabuf_len);

/**
 * The error code (an `OramStorageError` in C) of the calling thread's last call of this
 * interface, 0 if it succeeded.
 */
int32_t oram_storage_last_error(void);

/**
 * Copies the text of the calling thread's last failure (empty after a success) into `buf`,
 * truncated to `buf_len - 1` bytes and NUL-terminated, and returns the full text's length in
 * bytes, without the NUL. With a null `buf` or a `buf_len` of 0 it only returns the length.
 *
 * # Safety
 *
 * `buf` must be null or valid for writing `buf_len` bytes.
 */
size_t oram_storage_last_error_message(char *buf, size_t buf_len);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* ORAMSTORE_H */
