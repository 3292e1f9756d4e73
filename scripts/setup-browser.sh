#!/usr/bin/env bash
# Install what the browser test (tests/test_app_browser.py) needs; safe to run again (does nothing when done).
#   - Debian's chromium at /usr/bin/chromium (apt-get; needs root, or sudo without a password)
#   - playwright-core, pinned, into .browser/ (project-local, gitignored). Playwright's own browser download
#     (`npx playwright install`) is not used: the test drives /usr/bin/chromium.
# Exit status 0 when both are in place; otherwise 1 with the reason (the test then skips with that reason).
set -euo pipefail

PLAYWRIGHT_CORE_VERSION=1.65.1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.browser"

if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"
    else echo "setup-browser: /usr/bin/chromium is missing and apt-get needs root" >&2; exit 1; fi
    $SUDO apt-get install -y chromium >/dev/null 2>&1 || { $SUDO apt-get update >/dev/null && \
        $SUDO apt-get install -y chromium >/dev/null; } || { echo "setup-browser: apt-get install chromium failed" >&2; exit 1; }
fi

have="$(node -e "try{console.log(require('$DEST/node_modules/playwright-core/package.json').version)}catch(e){}" 2>/dev/null || true)"
if [ "$have" != "$PLAYWRIGHT_CORE_VERSION" ]; then
    command -v npm >/dev/null || { echo "setup-browser: npm is missing (install Node.js)" >&2; exit 1; }
    mkdir -p "$DEST"
    [ -f "$DEST/package.json" ] || echo '{"name": "boothkit-browser-tests", "private": true}' > "$DEST/package.json"
    npm install --prefix "$DEST" --no-audit --no-fund --silent "playwright-core@$PLAYWRIGHT_CORE_VERSION" \
        || { echo "setup-browser: npm install playwright-core@$PLAYWRIGHT_CORE_VERSION failed" >&2; exit 1; }
fi
echo "setup-browser: chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}'), playwright-core $PLAYWRIGHT_CORE_VERSION in $DEST"
