#!/usr/bin/env node
// The one `keyward` binary: runs the compiled CLI (npm install builds dist/ through `prepare`).
import "../dist/cli/main.js";
