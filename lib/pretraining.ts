// Kept only so that bench/gpu/prepare.sh (`import { writeBpeFiles } from './dist/pretraining.js'`) keeps working:
// the folder writers live in hf-folder.ts, pretraining itself in training/. Remove once that script imports
// dist/hf-folder.js.
export { writeBpeFiles, saveHfFolder } from './hf-folder.js'
