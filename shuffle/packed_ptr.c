/*
 * Checked packing of the shuffle's 8-byte record pointers (layout in
 * include/spate/shuffle.h). The hot path uses the unchecked inline encoder;
 * this one is for boundaries where a value may come from outside.
 */
#include "shuffle_int.h"

sp_status_t sp_shuffle_packed_ptr_pack(uint64_t partition, uint64_t page, uint64_t offset,
                                       uint64_t *ptr_p)
{
    if (partition >= SP_MAX_PARTITIONS)
        return SP_RAISE(SP_ERR_TOO_LARGE, "partition %llu does not fit in %d bits (max %u)",
                        (unsigned long long)partition, SP_PARTITION_BITS, SP_MAX_PARTITIONS - 1);
    if (page >= SP_PAGE_TABLE_SIZE)
        return SP_RAISE(SP_ERR_TOO_LARGE, "page number %llu does not fit in %d bits (max %u)",
                        (unsigned long long)page, SP_PAGE_NUMBER_BITS, SP_PAGE_TABLE_SIZE - 1);
    if (offset > SP_PAGE_MAX_OFFSET)
        return SP_RAISE(SP_ERR_TOO_LARGE, "page offset %llu does not fit in %d bits (max %u)",
                        (unsigned long long)offset, SP_PAGE_OFFSET_BITS, SP_PAGE_MAX_OFFSET);
    *ptr_p = sp_shuffle_packed_ptr_encode((uint32_t)partition, (uint32_t)page, (uint32_t)offset);
    return SP_OK;
}
