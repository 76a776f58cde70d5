// The Tensor type of the public API: dtype, shape, device, and the data as a TypedArray. Host tensors hand their
// TypedArray to native code without copying; device tensors stay on the device until `.data` is read.
import { SemicapError } from './errors.js'
import type { AddonTensor, WireTensor } from './native.js'
import { callSync } from './native.js'

export type DType = 'float32' | 'float16' | 'bfloat16' | 'int64' | 'int32' | 'uint8' | 'bool'
export type TypedArray = Float32Array | Uint16Array | BigInt64Array | Int32Array | Uint8Array

const ARRAY_OF: Record<DType, new (n: number) => TypedArray> = {
  float32: Float32Array,
  float16: Uint16Array,
  bfloat16: Uint16Array,
  int64: BigInt64Array,
  int32: Int32Array,
  uint8: Uint8Array,
  bool: Uint8Array,
}

function defaultDtype(data: TypedArray): DType {
  if (data instanceof Float32Array) return 'float32'
  if (data instanceof BigInt64Array) return 'int64'
  if (data instanceof Int32Array) return 'int32'
  if (data instanceof Uint8Array) return 'uint8'
  if (data instanceof Uint16Array) return 'float16'
  throw new TypeError('tensor data must be a Float32Array, Uint16Array, BigInt64Array, Int32Array or Uint8Array')
}

/** Whether the view's buffer can change size under it (a resizable ArrayBuffer, a growable SharedArrayBuffer). */
function resizable(data: TypedArray): boolean {
  const b = data.buffer as ArrayBuffer & { resizable?: boolean; growable?: boolean }
  return b.resizable === true || b.growable === true
}

/** Throws E_DETACHED when the view no longer holds `n` elements (its buffer was detached or shrunk). */
function checkAttached<T extends TypedArray>(data: T, n: number): T {
  if (data.length < n) {
    const detached = (data.buffer as ArrayBuffer & { detached?: boolean }).detached === true || data.buffer.byteLength === 0
    throw new SemicapError(
      'E_DETACHED',
      detached
        ? `tensor data is detached: its ArrayBuffer was transferred (structuredClone / postMessage with a transfer list / transfer()) before the call`
        : `tensor data holds ${data.length} elements but the tensor needs ${n}: its buffer was shrunk`,
    )
  }
  return data
}

/** The first `n` elements in a fresh, non-resizable ArrayBuffer. */
function ownedCopy(data: TypedArray, n: number): TypedArray {
  checkAttached(data, n)
  const Ctor = data.constructor as new (n: number) => TypedArray
  const out = new Ctor(n)
  ;(out as Float32Array).set((data as Float32Array).subarray(0, n))
  return out
}

export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1)
}

function checkShape(shape: readonly number[]): void {
  if (!Array.isArray(shape)) throw new TypeError('shape must be an array of non-negative integers')
  for (const d of shape) if (!Number.isSafeInteger(d) || d < 0) throw new RangeError(`shape entries must be non-negative integers, got ${String(d)}`)
}

export class Tensor {
  readonly dtype: DType
  readonly shape: readonly number[]
  readonly device: string
  #data: TypedArray | undefined
  #native: AddonTensor | undefined

  /** Prefer `tensor()`; this wraps already validated parts. */
  constructor(dtype: DType, shape: readonly number[], data: TypedArray | undefined, device = 'cpu', handle?: AddonTensor) {
    this.dtype = dtype
    this.shape = Object.freeze([...shape])
    this.device = device
    this.#data = data
    this.#native = handle
  }

  get size(): number {
    return numel(this.shape)
  }

  /** The elements as a TypedArray (16-bit floats as raw Uint16Array). Device tensors are copied to the host once. */
  get data(): TypedArray {
    if (!this.#data) {
      if (!this.#native) throw new SemicapError('E_DISPOSED', 'tensor was disposed')
      const host = callSync(() => this.#native!.toHost())
      this.#data = host.data as TypedArray
    }
    return this.#data
  }

  /** A host copy (or this tensor when already on the host). */
  cpu(): Tensor {
    return this.device === 'cpu' ? this : new Tensor(this.dtype, this.shape, this.data, 'cpu')
  }

  /** Plain numbers (bigints become numbers). */
  toArray(): number[] {
    return Array.from(this.data as ArrayLike<number | bigint>, Number)
  }

  /** Row `i` of the first dimension, sharing memory. */
  row(i: number): Tensor {
    if (!Number.isInteger(i) || i < 0 || i >= (this.shape[0] ?? 0)) throw new RangeError(`row ${i} out of range`)
    const per = numel(this.shape.slice(1))
    const d = this.data
    return new Tensor(this.dtype, this.shape.slice(1), d.subarray(i * per, (i + 1) * per) as TypedArray)
  }

  /** Frees device memory now instead of at garbage collection. */
  dispose(): void {
    this.#native?.dispose()
    this.#native = undefined
    if (this.device !== 'cpu') this.#data = undefined
  }

  /**
   * @internal the boundary form for a synchronous native call (one that has read the data when it returns): host
   * data is borrowed, unless its buffer can change size (a resizable ArrayBuffer, a growable SharedArrayBuffer), in
   * which case the tensor's elements are copied. A detached or shrunk buffer fails with E_DETACHED.
   */
  toWire(): WireTensor {
    if (this.#native) return { dtype: this.dtype, shape: [...this.shape], native: this.#native }
    const data = this.data
    return { dtype: this.dtype, shape: [...this.shape], data: resizable(data) ? ownedCopy(data, this.size) : checkAttached(data, this.size) }
  }

  /**
   * @internal the boundary form for a native call that reads the data after it returns (an async worker): host data
   * is always copied, now, into a fresh ArrayBuffer nobody else holds. A borrowed buffer could be detached while the
   * worker reads it (`structuredClone(x, { transfer })`, `postMessage` with a transfer list,
   * `ArrayBuffer.prototype.transfer()`): N-API pins the JS object but not its backing store, which then belongs to
   * the new owner and may be freed. The copy costs about 1 ms for a [8,3,224,224] float32 batch (4.8 MB).
   */
  toAsyncWire(): WireTensor {
    if (this.#native) return { dtype: this.dtype, shape: [...this.shape], native: this.#native }
    return { dtype: this.dtype, shape: [...this.shape], data: ownedCopy(this.data, this.size) }
  }

  /** @internal */
  static fromWire(w: WireTensor): Tensor {
    return new Tensor(w.dtype as DType, w.shape, w.data as TypedArray | undefined, w.device ?? 'cpu', w.native)
  }
}

/**
 * Builds a tensor over `data` (not copied). `shape` defaults to [data.length]; `dtype` to the TypedArray's natural
 * type (Uint16Array means float16 unless 'bfloat16' is given). Plain number arrays become float32.
 */
export function tensor(data: TypedArray | number[], shape?: readonly number[], dtype?: DType): Tensor {
  let arr: TypedArray
  if (Array.isArray(data)) {
    const dt = dtype ?? 'float32'
    const Ctor = ARRAY_OF[dt]
    if (!Ctor) throw new TypeError(`unknown dtype '${String(dtype)}'`)
    arr = new Ctor(data.length)
    if (arr instanceof BigInt64Array) data.forEach((x, i) => ((arr as BigInt64Array)[i] = BigInt(x)))
    else (arr as Float32Array).set(data)
  } else {
    arr = data
  }
  const dt = dtype ?? defaultDtype(arr)
  const Ctor = ARRAY_OF[dt]
  if (!Ctor) throw new TypeError(`unknown dtype '${String(dt)}'`)
  if (!(arr instanceof Ctor)) throw new TypeError(`a ${dt} tensor needs a ${Ctor.name}, got ${arr?.constructor?.name ?? typeof arr}`)
  const sh = shape ?? [arr.length]
  checkShape(sh)
  if (numel(sh) !== arr.length) throw new RangeError(`shape [${sh.join(', ')}] holds ${numel(sh)} elements but data has ${arr.length}`)
  return new Tensor(dt, sh, arr)
}

/** int64 tensor from nested number arrays (rows must have equal length). */
export function int64(rows: number[][]): Tensor {
  const T = rows[0]?.length ?? 0
  const out = new BigInt64Array(rows.length * T)
  rows.forEach((r, i) => {
    if (r.length !== T) throw new RangeError('all rows must have the same length')
    r.forEach((x, j) => (out[i * T + j] = BigInt(x)))
  })
  return new Tensor('int64', [rows.length, T], out)
}
