// Shared by the GPU-machine scripts (plain .mjs: that machine may run them without tsx).
/** Max absolute difference over the reference's max magnitude. */
export const rel = (a, b) => {
  let d = 0, s = 0
  for (let i = 0; i < b.length; i++) (d = Math.max(d, Math.abs(a[i] - b[i]))), (s = Math.max(s, Math.abs(b[i])))
  return d / s
}
