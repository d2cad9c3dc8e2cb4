//! Offloading Black-Scholes batches: cut a range of options into chunks that fit a slot,
//! archive each (rkyv, the function's input type) straight into its request slot, invoke
//! them over every node's allocation at once, and copy the prices out of the response
//! slots.

use std::ops::Range;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rafi::client::{Allocation, InvokeError};
use rafi::fabric::Fabric;
use rafi_example_functions::ArchivedPrices;

use crate::batch::OptionBatch;

/// The function that prices a batch (the Rust example library's).
pub const PRICE_FUNCTION: &str = "blackscholes";
/// The function that does nothing: the same transfers without the pricing.
pub const NOOP_FUNCTION: &str = "noop";

/// Bytes an archived option takes (five f64s).
const BYTES_PER_OPTION: usize = 40;
/// Room for the archive's headers and alignment padding (five vectors and the root).
const ARCHIVE_OVERHEAD: usize = 256;

/// Options one invocation carries when its input may be `max_payload` bytes (the output,
/// 8 B per option, is smaller than the input).
pub fn options_per_chunk(max_payload: usize) -> usize {
    max_payload.saturating_sub(ARCHIVE_OVERHEAD) / BYTES_PER_OPTION
}

/// The smallest input payload that carries `options` options.
pub fn payload_for(options: usize) -> usize {
    options * BYTES_PER_OPTION + ARCHIVE_OVERHEAD
}

/// `range` cut into consecutive chunks of at most `per_chunk` options.
pub fn chunks(range: Range<usize>, per_chunk: usize) -> Vec<Range<usize>> {
    let per_chunk = per_chunk.max(1);
    (range.start..range.end)
        .step_by(per_chunk)
        .map(|start| start..(start + per_chunk).min(range.end))
        .collect()
}

/// Archives the options of `range` of `batch` as the function's input at the start of
/// `area` (a request slot's payload area, [`Allocation::invoke_many_with`]) and returns the
/// archive's length.
///
/// # Errors
/// [`InvokeError::PayloadTooLarge`] when the archive does not fit `area`.
pub fn encode_range(
    batch: &OptionBatch,
    range: &Range<usize>,
    area: &mut [u8],
) -> Result<usize, InvokeError> {
    rafi_function::encode(&batch.view(range.clone()), area).map_err(|e| match e {
        rafi_function::EncodeError::OutputTooSmall => InvokeError::PayloadTooLarge {
            len: payload_for(range.len()),
            max: area.len(),
        },
        other => InvokeError::Codec(format!("archiving options {range:?}: {other:?}")),
    })
}

/// Archives the options of each chunk as the function's input into buffers of their own,
/// each at most `max_payload` bytes: for data archived once and invoked later.
///
/// # Errors
/// When a chunk does not fit `max_payload` bytes.
pub fn encode_chunks(
    batch: &OptionBatch,
    ranges: &[Range<usize>],
    max_payload: usize,
) -> anyhow::Result<Vec<Vec<u8>>> {
    ranges
        .iter()
        .map(|range| {
            let mut bytes = vec![0u8; max_payload];
            let len = encode_range(batch, range, &mut bytes)
                .map_err(|e| anyhow!("archiving options {range:?} into {max_payload} B: {e}"))?;
            bytes.truncate(len);
            Ok(bytes)
        })
        .collect()
}

/// Writes an input archived already into its request slot.
///
/// # Errors
/// [`InvokeError::PayloadTooLarge`] when it does not fit.
pub fn copy_input(input: &[u8], area: &mut [u8]) -> Result<usize, InvokeError> {
    let max = area.len();
    let dst = area
        .get_mut(..input.len())
        .ok_or(InvokeError::PayloadTooLarge {
            len: input.len(),
            max,
        })?;
    dst.copy_from_slice(input);
    Ok(input.len())
}

/// Where [`invoke_spread`]'s thread time went, summed over its threads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spent {
    /// Writing the inputs into the request slots (`encode`).
    pub encode: Duration,
    /// Handling the responses (`handle`).
    pub handle: Duration,
}

/// Copies the prices of an archived `Prices` response into `out`.
///
/// # Errors
/// When the response is not a valid archive, or holds another number of prices.
pub fn decode_prices(response: &[u8], out: &mut [f64]) -> anyhow::Result<()> {
    let prices = rafi_function::decode::<ArchivedPrices>(response)
        .map_err(|e| anyhow!("the response is not an archive of prices: {e:?}"))?;
    if prices.call.len() != out.len() {
        bail!(
            "the response has {} prices for {} options",
            prices.call.len(),
            out.len()
        );
    }
    for (o, p) in out.iter_mut().zip(prices.call.iter()) {
        *o = p.to_native();
    }
    Ok(())
}

/// Invokes `function` on every item, item `i` on allocation `i mod n`, all allocations at
/// once (one thread each, `invoke_many_with` keeping every slot busy and `encode` writing
/// each item's input straight into its request slot), and hands each response to `handle`
/// with the item's target. Returns the time spent in `encode` and in `handle`.
///
/// # Errors
/// The first failed invocation or `handle` error (by item index); every item is attempted.
pub fn invoke_spread<F: Fabric, I: Sync, T: Send>(
    allocations: &mut [&mut Allocation<F>],
    function: &str,
    inputs: &[I],
    encode: impl Fn(&I, &mut [u8]) -> Result<usize, InvokeError> + Sync,
    targets: Vec<T>,
    handle: impl Fn(&[u8], &mut T) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<Spent> {
    if allocations.is_empty() {
        bail!("no remote allocation to invoke {function} on");
    }
    if targets.len() != inputs.len() {
        bail!("{} inputs but {} targets", inputs.len(), targets.len());
    }
    let n = allocations.len();
    // Each allocation's share: (item index, item, target).
    let mut shares: Vec<Vec<(usize, &I, T)>> = (0..n).map(|_| Vec::new()).collect();
    for (i, (input, target)) in inputs.iter().zip(targets).enumerate() {
        shares[i % n].push((i, input, target));
    }
    let (encode, handle) = (&encode, &handle);
    let outcomes: Vec<anyhow::Result<Spent>> = std::thread::scope(|s| {
        let threads: Vec<_> = allocations
            .iter_mut()
            .zip(shares)
            .map(|(allocation, share)| {
                s.spawn(move || invoke_share(allocation, function, share, encode, handle))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(anyhow!("an invoking thread panicked")))
            })
            .collect()
    });
    let mut spent = Spent::default();
    for outcome in outcomes {
        let s = outcome?;
        spent.encode += s.encode;
        spent.handle += s.handle;
    }
    Ok(spent)
}

/// One allocation's part of [`invoke_spread`].
fn invoke_share<F: Fabric, I, T>(
    allocation: &mut Allocation<F>,
    function: &str,
    mut share: Vec<(usize, &I, T)>,
    encode: &(impl Fn(&I, &mut [u8]) -> Result<usize, InvokeError> + Sync),
    handle: &(impl Fn(&[u8], &mut T) -> anyhow::Result<()> + Sync),
) -> anyhow::Result<Spent> {
    let f = allocation.function(function)?;
    let inputs: Vec<&I> = share.iter().map(|(_, input, _)| *input).collect();
    let mut first_error: Option<(usize, anyhow::Error)> = None;
    let mut handling = Duration::ZERO;
    let mut encoding = Duration::ZERO;
    let mut answered = 0usize;
    allocation
        .invoke_many_with(
            f,
            inputs,
            |input, area| {
                let started = Instant::now();
                let len = encode(input, area);
                encoding += started.elapsed();
                len
            },
            |k, result| {
                answered += 1;
                let (index, _, target) = &mut share[k];
                let outcome = result.map_err(anyhow::Error::from).and_then(|response| {
                    let started = Instant::now();
                    let r = handle(response, target);
                    handling += started.elapsed();
                    r
                });
                if let Err(e) = outcome {
                    match &first_error {
                        Some((i, _)) if *i < *index => {}
                        _ => first_error = Some((*index, e)),
                    }
                }
            },
        )
        .with_context(|| format!("invoking {function}"))?;
    if let Some((index, e)) = first_error {
        return Err(e.context(format!("invocation {index} of {function}")));
    }
    if answered != share.len() {
        bail!(
            "{function}: {} of {} inputs got no answer",
            share.len() - answered,
            share.len()
        );
    }
    Ok(Spent {
        encode: encoding,
        handle: handling,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::OptionBatch;

    /// A `len`-byte window of `storage` that starts at a 16-byte boundary (rkyv's).
    fn aligned(storage: &mut Vec<u8>, len: usize) -> &mut [u8] {
        storage.resize(len + 16, 0);
        let offset = storage.as_ptr().align_offset(16);
        &mut storage[offset..offset + len]
    }

    #[test]
    fn chunks_cover_the_range_in_order() {
        assert_eq!(chunks(10..35, 10), vec![10..20, 20..30, 30..35]);
        assert_eq!(chunks(5..5, 10), Vec::<Range<usize>>::new());
        assert_eq!(chunks(0..3, 0), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn a_full_chunk_fits_its_payload_and_decodes_as_the_function_would_answer() {
        for payload in [4096usize, 65536 - 64, (1 << 20) - 64] {
            let per_chunk = options_per_chunk(payload);
            let batch = OptionBatch::generate(per_chunk, 3);
            let whole = chunks(0..per_chunk, per_chunk);
            let encoded = encode_chunks(&batch, &whole, payload).unwrap();
            assert!(encoded[0].len() <= payload);
            // The function library run in-process on the archive, as an executor would.
            let (mut input_storage, mut output_storage) = (Vec::new(), Vec::new());
            let input = aligned(&mut input_storage, encoded[0].len());
            input.copy_from_slice(&encoded[0]);
            let options =
                rafi_function::decode::<rafi_example_functions::ArchivedOptions>(input).unwrap();
            let prices = rafi_example_functions::price_batch(options).unwrap();
            let response = aligned(&mut output_storage, payload);
            let len = rafi_function::encode(&prices, response).unwrap();
            let response = &response[..len];
            let mut out = vec![0.0; per_chunk];
            decode_prices(response, &mut out).unwrap();
            let mut reference = vec![0.0; per_chunk];
            batch.price_into(0..per_chunk, &mut reference);
            assert_eq!(out, reference);
            let mut short = vec![0.0; per_chunk - 1];
            assert!(decode_prices(response, &mut short).is_err());
        }
    }

    #[test]
    fn an_oversized_chunk_is_an_error() {
        let batch = OptionBatch::generate(200, 3);
        assert!(encode_chunks(&batch, &chunks(0..200, 200), payload_for(100)).is_err());
        assert!(decode_prices(&[0u8; 3], &mut [0.0]).is_err());
    }
}
