#!/usr/bin/env bash
# Run here (not on the GPU machine): stages what the GPU run needs into .device/ (git-ignored, carried by the
# device tool): a Node binary, the runtime npm packages, compiled JS, node-addon-api headers, the golden files
# and GPT-2's tokenizer files.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .device && mkdir -p .device
npx tsc -p tsconfig.json
xz -T2 -6 -c "$(command -v node)" > .device/node.xz
tar -cJf .device/node_modules.tar.xz node_modules/sharp node_modules/@img node_modules/node-gyp-build \
  node_modules/node-addon-api node_modules/node-api-headers node_modules/detect-libc node_modules/semver node_modules/color* \
  node_modules/simple-swizzle node_modules/is-arrayish 2>/dev/null || true
cp -r dist .device/dist
cp -r ../shared/golden .device/golden
mkdir -p .device/clip-tokenizer && cp ../shared/clip-tokenizer/vocab.json ../shared/clip-tokenizer/merges.txt .device/clip-tokenizer/
node --input-type=module -e "
  import { Gpt2Tokenizer } from './dist/index.js'
  import { writeBpeFiles } from './dist/pretraining.js'
  import { mkdirSync } from 'node:fs'
  mkdirSync('.device/gpt2-tokenizer', { recursive: true })
  await writeBpeFiles('.device/gpt2-tokenizer', await Gpt2Tokenizer.fromPackage())
"
du -sh .device/*
