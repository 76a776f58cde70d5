// What the CLI's command modules share: Commander argument parsers and stdout. lib/cli.ts and every lib/cli-*.ts
// import from here, never from each other (lib/cli.ts alone imports the command modules, to list them).
import { InvalidArgumentError, type Command } from 'commander'
import type { DeviceOption } from './device.js'

/** Adds one subcommand (with its options and action) to the program. */
export type CommandModule = (program: Command) => void

/** Commander argument parser for integers >= `min`. */
export function intOption(min = 1): (value: string) => number {
  return (value) => {
    const n = Number(value)
    if (!/^\s*-?\d+\s*$/.test(value) || !Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`expected an integer >= ${min}, got '${value}'`)
    return n
  }
}

/** Commander argument parser for finite numbers. */
export function numberOption(value: string): number {
  const n = Number(value)
  if (value.trim() === '' || !Number.isFinite(n)) throw new InvalidArgumentError(`expected a number, got '${value}'`)
  return n
}

/** Commander parser for positive finite numbers. */
export function positiveNumber(value: string): number {
  const n = numberOption(value)
  if (!(n > 0)) throw new InvalidArgumentError(`expected a number > 0, got '${value}'`)
  return n
}

/** Commander parser for non-negative finite numbers. */
export function nonNegativeNumber(value: string): number {
  const n = numberOption(value)
  if (!(n >= 0)) throw new InvalidArgumentError(`expected a number >= 0, got '${value}'`)
  return n
}

/** Commander parser for --device: cpu, cuda, cuda:N or auto. */
export function deviceOption(value: string): DeviceOption {
  if (!/^(cpu|cuda|auto|cuda:\d+)$/.test(value)) throw new InvalidArgumentError(`expected cpu, cuda, cuda:N or auto, got '${value}'`)
  return value as DeviceOption
}

/** Writes to stdout and resolves once the text is handed to the OS (pipes included). */
export function print(text: string): Promise<void> {
  return new Promise((resolve, reject) => process.stdout.write(text, (err) => (err ? reject(err) : resolve())))
}
