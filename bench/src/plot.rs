//! The PNG plot: median TPS by client count, one line per arm, one panel per workload and -M mode.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::arms::Arm;
use crate::pgbench::Workload;
use crate::results::Results;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn register_font() -> Result<()> {
    let bytes = std::fs::read(FONT).with_context(|| format!("font {FONT} (Debian package fonts-dejavu-core)"))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("font {FONT} is not a usable TrueType font"))
}

fn colour(arm: Arm) -> RGBColor {
    match arm {
        Arm::Direct => RGBColor(0, 0, 0),
        Arm::Pgbouncer => RGBColor(120, 120, 120),
        Arm::DwNoRules => RGBColor(31, 119, 180),
        Arm::DwElsewhere => RGBColor(23, 190, 207),
        Arm::DwDualWrite => RGBColor(214, 39, 40),
        Arm::DwDualWriteWatch => RGBColor(140, 86, 75),
        Arm::TriggerDirect => RGBColor(255, 127, 14),
        Arm::TriggerPgbouncer => RGBColor(188, 189, 34),
        Arm::CteDirect => RGBColor(148, 103, 189),
        Arm::PgbouncerTx => RGBColor(60, 60, 60),
        Arm::DwTx => RGBColor(44, 160, 44),
        Arm::FloorTokio => RGBColor(31, 60, 120),
        Arm::FloorTokioIo => RGBColor(90, 130, 200),
        Arm::FloorMio => RGBColor(227, 119, 194),
        Arm::DwNoRules1 => RGBColor(100, 180, 240),
        Arm::FloorTokio1 => RGBColor(20, 40, 80),
        Arm::FloorMio1 => RGBColor(160, 60, 130),
    }
}

pub fn draw(r: &Results, path: &Path) -> Result<()> {
    register_font()?;
    let modes = r.plan.modes.clone();
    let root = BitMapBackend::new(path, (560 * modes.len() as u32, 920)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((Workload::ALL.len(), modes.len()));
    for (index, panel) in panels.iter().enumerate() {
        let workload = Workload::ALL[index / modes.len()];
        let mode = modes[index % modes.len()];
        let clients = r.plan.all_clients(workload);
        let series: Vec<(Arm, Vec<(f64, f64)>)> = Arm::ALL
            .iter()
            .filter(|a| a.runs(workload))
            .map(|&arm| {
                let points = clients
                    .iter()
                    .enumerate()
                    .filter_map(|(i, &c)| Some((i as f64, r.tps(arm, workload, mode, c)?)))
                    .collect::<Vec<_>>();
                (arm, points)
            })
            .filter(|(_, p)| !p.is_empty())
            .collect();
        let max_tps = series.iter().flat_map(|(_, p)| p.iter().map(|(_, t)| *t)).fold(0.0f64, f64::max).max(1.0);
        // Client counts sit at even spacing (index on the axis, labelled with the count).
        let last = clients.len().saturating_sub(1) as f64;
        let label_of = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 && (i as usize) < clients.len() {
                clients[i as usize].to_string()
            } else {
                String::new()
            }
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{} -M {}", workload.label(), mode.arg()), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.25f64..last + 0.25, 0f64..max_tps * 1.1)?;
        chart
            .configure_mesh()
            .x_desc("clients")
            .y_desc("TPS")
            .x_labels(clients.len() * 4 + 1)
            .x_label_formatter(&label_of)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (arm, points) in series {
            let style = colour(arm).stroke_width(2);
            chart
                .draw_series(LineSeries::new(points.clone(), style))?
                .label(arm.key())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour(arm).stroke_width(2)));
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, colour(arm).filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
