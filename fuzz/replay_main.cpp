// sg_fuzz_replay: runs the fuzz targets over their committed corpora without libFuzzer, built by
// the regular compiler, so every ctest run checks the inputs the fuzzers once found interesting.
//
//   sg_fuzz_replay CORPUS_ROOT              every file of CORPUS_ROOT/<target>/ through <target>;
//                                           every target needs a non-empty directory
//   sg_fuzz_replay TARGET FILE_OR_DIR...    chosen inputs (e.g. fuzz/crashes/<target>/) through one target
//
// Each fuzz_<target>.cpp is compiled with -DLLVMFuzzerTestOneInput=sg_fuzz_<target> for this binary.
// A broken invariant aborts; the input being run is printed first.
#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <unistd.h>
#include <vector>

extern "C" int sg_fuzz_connection_string(const std::uint8_t*, std::size_t);
extern "C" int sg_fuzz_sas_token(const std::uint8_t*, std::size_t);
extern "C" int sg_fuzz_protocol(const std::uint8_t*, std::size_t);
extern "C" int sg_fuzz_router(const std::uint8_t*, std::size_t);
extern "C" int sg_fuzz_mqtt(const std::uint8_t*, std::size_t);

namespace {

namespace fs = std::filesystem;

struct target {
    const char* name;
    int (*run)(const std::uint8_t*, std::size_t);
};

const target targets[] = {
    {"connection_string", sg_fuzz_connection_string},
    {"sas_token", sg_fuzz_sas_token},
    {"protocol", sg_fuzz_protocol},
    {"router", sg_fuzz_router},
    {"mqtt", sg_fuzz_mqtt},
};

const target* find_target(const std::string& name)
{
    for (const auto& t : targets)
        if (name == t.name) return &t;
    return nullptr;
}

// The input being replayed, for the crash message (kept in a static buffer: read in a signal handler).
char current[4096] = "(none)";

void on_fatal_signal(int sig)
{
    const char* head = "\nsg_fuzz_replay: crashed on input ";
    (void)!write(2, head, std::strlen(head));
    (void)!write(2, current, std::strlen(current));
    (void)!write(2, "\n", 1);
    std::signal(sig, SIG_DFL);
    std::raise(sig);
}

bool replay_file(const target& t, const fs::path& file)
{
    std::snprintf(current, sizeof current, "%s (target %s)", file.c_str(), t.name);
    std::ifstream in(file, std::ios::binary);
    if (!in) {
        std::fprintf(stderr, "sg_fuzz_replay: cannot read %s\n", file.c_str());
        return false;
    }
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // A copy of exactly the input's size, so an overread is as visible as under libFuzzer (with ASan).
    std::vector<std::uint8_t> data(bytes.begin(), bytes.end());
    t.run(data.empty() ? nullptr : data.data(), data.size());
    return true;
}

// Files of path (itself when it is a file), sorted for a stable order. -1 when unreadable.
long replay_path(const target& t, const fs::path& path)
{
    std::error_code ec;
    std::vector<fs::path> files;
    if (fs::is_directory(path, ec)) {
        for (const auto& entry : fs::directory_iterator(path, ec))
            if (entry.is_regular_file()) files.push_back(entry.path());
        if (ec) {
            std::fprintf(stderr, "sg_fuzz_replay: cannot list %s: %s\n", path.c_str(), ec.message().c_str());
            return -1;
        }
        std::sort(files.begin(), files.end());
    } else if (fs::is_regular_file(path, ec)) {
        files.push_back(path);
    } else {
        std::fprintf(stderr, "sg_fuzz_replay: no such file or directory: %s\n", path.c_str());
        return -1;
    }
    for (const auto& f : files)
        if (!replay_file(t, f)) return -1;
    return static_cast<long>(files.size());
}

int usage()
{
    std::fprintf(stderr, "usage: sg_fuzz_replay CORPUS_ROOT\n       sg_fuzz_replay TARGET FILE_OR_DIR...\ntargets:");
    for (const auto& t : targets) std::fprintf(stderr, " %s", t.name);
    std::fprintf(stderr, "\n");
    return 2;
}

} // namespace

int main(int argc, char** argv)
{
    for (int sig : {SIGABRT, SIGSEGV, SIGBUS, SIGILL, SIGFPE})
        std::signal(sig, on_fatal_signal);
    std::set_terminate([] {
        std::fprintf(stderr, "sg_fuzz_replay: uncaught exception on input %s\n", current);
        std::abort();
    });

    if (argc == 2 && !find_target(argv[1])) {
        // Corpus root: one directory per target, each present and non-empty, nothing unknown.
        const fs::path root = argv[1];
        std::error_code ec;
        if (!fs::is_directory(root, ec)) {
            std::fprintf(stderr, "sg_fuzz_replay: %s is not a directory\n", root.c_str());
            return 1;
        }
        bool ok = true;
        for (const auto& entry : fs::directory_iterator(root, ec)) {
            if (entry.is_directory() && !find_target(entry.path().filename().string())) {
                std::fprintf(stderr, "sg_fuzz_replay: %s is not a fuzz target's corpus\n", entry.path().c_str());
                ok = false;
            }
        }
        for (const auto& t : targets) {
            long n = replay_path(t, root / t.name);
            if (n <= 0) {
                if (n == 0) std::fprintf(stderr, "sg_fuzz_replay: the corpus of %s is empty\n", t.name);
                ok = false;
                continue;
            }
            std::printf("%-18s %ld inputs replayed\n", t.name, n);
        }
        return ok ? 0 : 1;
    }

    if (argc < 3) return usage();
    const target* t = find_target(argv[1]);
    if (!t) return usage();
    long total = 0;
    for (int i = 2; i < argc; ++i) {
        long n = replay_path(*t, argv[i]);
        if (n < 0) return 1;
        total += n;
    }
    std::printf("%s: %ld inputs replayed\n", t->name, total);
    return 0;
}
