#!/usr/bin/env node
// node-gyp shim target (binding.gyp): builds through CMakeLists.txt, the one build description, then puts the
// addon where node-gyp tools expect it.
'use strict'
const { spawnSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const root = path.resolve(__dirname, '..')
const out = path.join(root, 'build', 'cmake')
const r = spawnSync(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), 'compile', '-O', out], { cwd: root, stdio: 'inherit' })
if (r.status !== 0) process.exit(r.status || 1)
fs.mkdirSync(path.join(root, 'build', 'Release'), { recursive: true })
fs.copyFileSync(path.join(out, 'Release', 'semicap.node'), path.join(root, 'build', 'Release', 'semicap.node'))
