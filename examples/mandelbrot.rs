//! cargo run --release --example mandelbrot
//!
//! Renders a Mandelbrot image through a pool of worker processes and writes it as a PNG
//! (mandelbrot.png in the system's temporary directory, or the path given as the first
//! argument).

use procpool::Pool;
use procpool::workload::Mandelbrot;
use procpool::workload::mandelbrot::{DEFAULT_MAX_ITER, write_png};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    procpool::init();

    let path = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("mandelbrot.png"));
    let side = 800;
    let image = Mandelbrot::new(side, DEFAULT_MAX_ITER);

    let mut pool = Pool::builder().workers(2).build()?;
    let run = pool.run(&image, side * side)?;
    write_png(&path, side, run.results(), DEFAULT_MAX_ITER)?;
    println!(
        "wrote {} ({side}×{side} pixels) in {:.1} ms on {} workers",
        path.display(),
        run.stats().wall.as_secs_f64() * 1e3,
        run.stats().workers.len()
    );
    Ok(())
}
