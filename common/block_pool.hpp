#pragma once
// Fixed-size heap blocks kept per thread for reuse. The data path takes a block for each message
// in flight and gives it back right after: handing it to malloc each time made glibc grow and
// trim its heap (a brk pair, and fresh pages faulted in) for nearly every message.
#include <array>
#include <cstddef>
#include <memory>

namespace sg {

template <std::size_t BlockSize, std::size_t Kept>
class block_pool {
public:
    static constexpr std::size_t block_size = BlockSize;

    // A block of `size` bytes (not zeroed: written before read), from the pool when it is the
    // pool's size.
    static std::unique_ptr<char[]> take(std::size_t size = BlockSize)
    {
        auto& p = instance();
        if (size != BlockSize || p.count_ == 0)
            return std::unique_ptr<char[]>(new char[size]);
        return std::move(p.free_[--p.count_]);
    }
    // Keeps a block of the pool's size for this thread's next take(), unless enough are kept;
    // anything else is freed.
    static void give(std::unique_ptr<char[]> block, std::size_t size = BlockSize)
    {
        auto& p = instance();
        if (block && size == BlockSize && p.count_ < Kept)
            p.free_[p.count_++] = std::move(block);
    }

private:
    static block_pool& instance()
    {
        thread_local block_pool p;
        return p;
    }
    std::array<std::unique_ptr<char[]>, Kept> free_;
    std::size_t count_ = 0;
};

} // namespace sg
