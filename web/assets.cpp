// node-xterm (Debian's xterm.js 3.8) ships CommonJS modules only; libjs-xterm's xterm.js is a
// stub that require()s them. The gateway joins the modules of /usr/share/nodejs/xterm/lib into
// one script at start-up, each wrapped in a function, with a 20-line require(): nothing vendored,
// and the browser gets the code Debian ships.
#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>
#include <boost/json.hpp>
#include "web/internal.hpp"

namespace sg::web {

namespace {
std::string read_all(const std::filesystem::path& p)
{
    std::ifstream in(p, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}
} // namespace

std::string build_xterm_bundle(const std::filesystem::path& lib_dir, const std::filesystem::path& fit_addon)
{
    if (!std::filesystem::exists(lib_dir / "public" / "Terminal.js"))
        throw std::runtime_error(lib_dir.string() + "/public/Terminal.js not found: install node-xterm "
                                 "(scripts/install-deps.sh) or point --xterm-lib at xterm.js's lib/ directory");
    std::vector<std::filesystem::path> files;
    for (auto& e : std::filesystem::recursive_directory_iterator(lib_dir)) {
        auto name = e.path().filename().string();
        if (e.is_regular_file() && name.ends_with(".js") && !name.ends_with(".test.js"))
            files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    std::string out =
        "// xterm.js from Debian's node-xterm, joined by streamgate-web (web/assets.cpp)\n"
        "(function(){\n"
        "var defs = {}, cache = {};\n"
        "function norm(base, rel) {\n"
        "  var parts = base.split('/'); parts.pop();\n"
        "  rel.split('/').forEach(function(p){ if (p === '..') parts.pop(); else if (p !== '.') parts.push(p); });\n"
        "  return parts.join('/');\n"
        "}\n"
        "function load(name) {\n"
        "  if (!defs[name] && defs[name + '/index']) name = name + '/index';\n"
        "  if (cache[name]) return cache[name].exports;\n"
        "  if (!defs[name]) throw new Error('xterm bundle: no module ' + name);\n"
        "  var module = { exports: {} }; cache[name] = module;\n"
        "  defs[name](function(r){ return load(norm(name, r)); }, module, module.exports);\n"
        "  return module.exports;\n"
        "}\n";
    for (const auto& f : files) {
        auto rel = std::filesystem::relative(f, lib_dir).string();
        rel.resize(rel.size() - 3); // ".js"
        std::string source = read_all(f);
        // Drop the source map reference: the maps are not served.
        if (auto at = source.rfind("//# sourceMappingURL="); at != std::string::npos)
            source.resize(at);
        out += "defs[" + boost::json::serialize(boost::json::string(rel)) +
               "] = function(require, module, exports) {\n" + source + "\n};\n";
    }
    // libjs-xterm's fit addon is CommonJS too.
    out += "defs['addons/fit'] = function(require, module, exports) {\n" + read_all(fit_addon) + "\n};\n";
    out += "window.Terminal = load('public/Terminal').Terminal;\nwindow.xtermFit = load('addons/fit');\n})();\n";
    return out;
}

} // namespace sg::web
