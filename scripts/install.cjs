#!/usr/bin/env node
// npm install hook: use a loadable prebuilt/built addon when there is one, else build it with cmake-js.
// Without libtorch the build stops with a message saying how to get one.
'use strict'
const { spawnSync } = require('node:child_process')
const path = require('node:path')

const root = path.resolve(__dirname, '..')
process.env.OMP_WAIT_POLICY = process.env.OMP_WAIT_POLICY || 'PASSIVE'

function loadable() {
  try {
    require('node-gyp-build')(root)
    return true
  } catch {
    return false
  }
}

if (process.env.SEMICAP_FORCE_BUILD !== '1' && loadable()) {
  console.log('semicap: using the existing native addon')
  process.exit(0)
}

const cmakeJs = require.resolve('cmake-js/bin/cmake-js')
const args = [cmakeJs, 'compile', ...(process.env.SEMICAP_CMAKE_ARGS ? process.env.SEMICAP_CMAKE_ARGS.split(' ') : [])]
const r = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' })
if (r.status !== 0) {
  console.error(`
semicap: building the native addon failed. It needs libtorch (1.13 or 2.x) and a C++17 compiler with CMake:
  - Debian/Ubuntu:   sudo apt-get install libtorch-dev cmake g++
  - official build:  download libtorch from pytorch.org, unpack it, export LIBTORCH=/path/to/libtorch
  - pip:             pip install torch   (found through python3)
then run: npm rebuild semicap`)
  process.exit(r.status || 1)
}
