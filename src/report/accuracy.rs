//! Downstream accuracy side by side: one `shear eval --tasks --json` report per model (e.g. the source,
//! the pruned and the pruned + continued model) as a table and as bars per task with chance marked.

use polars::prelude::*;

use super::charts::{grouped_bar_chart, Axes, Svg};
use super::polars_err;
use crate::error::{Error, Result};
use crate::eval::tasks::TaskReport;

/// The reports' tasks, in the order of shear's task table. Reports side by side must hold the same tasks,
/// scored on the same documents with the same shots, so that their averages compare.
fn common_tasks(models: &[(String, TaskReport)]) -> Result<Vec<String>> {
    let first = &models.first().ok_or_else(|| Error::Invalid("no accuracy reports to compare".into()))?.1;
    let tasks: Vec<String> = first.in_table_order().iter().map(|r| r.task.clone()).collect();
    if tasks.is_empty() {
        return Err(Error::Invalid(format!("`{}` holds no task shear knows", models[0].0)));
    }
    let mut labels = std::collections::BTreeSet::new();
    for (label, _) in models {
        if label.is_empty() || ["task", "metric", "docs", "chance"].contains(&label.as_str()) || !labels.insert(label) {
            return Err(Error::Invalid(format!(
                "model label `{label}`: labels must be distinct, non-empty, and not task, metric, docs or chance"
            )));
        }
    }
    for (label, m) in &models[1..] {
        let names: Vec<String> = m.in_table_order().iter().map(|r| r.task.clone()).collect();
        if names != tasks {
            return Err(Error::Invalid(format!("`{label}` holds the tasks {names:?}, `{}` {tasks:?}", models[0].0)));
        }
        if m.shots != first.shots {
            return Err(Error::Invalid(format!(
                "`{label}` was scored with {} shots, `{}` with {}",
                m.shots, models[0].0, first.shots
            )));
        }
        if let Some(t) = tasks.iter().find(|t| m.tasks[*t].docs != first.tasks[*t].docs) {
            return Err(Error::Invalid(format!(
                "`{label}` has {} {t} documents, `{}` {} (a different --limit?)",
                m.tasks[t].docs, models[0].0, first.tasks[t].docs
            )));
        }
    }
    Ok(tasks)
}

/// One row per task: documents, chance, and each model's value of the paper's metric (`acc_norm` for
/// ARC-Challenge and HellaSwag, `acc` elsewhere), with a last row of their averages.
pub fn accuracy_table(models: &[(String, TaskReport)]) -> Result<DataFrame> {
    let tasks = common_tasks(models)?;
    let first = &models[0].1;
    let metric = |t: &str| first.tasks[t].paper_metric.name();
    let mut task_col: Vec<String> = tasks.clone();
    task_col.push("average".into());
    let mut metric_col: Vec<String> = tasks.iter().map(|t| metric(t).to_string()).collect();
    metric_col.push(String::new());
    let mut docs: Vec<Option<u64>> = tasks.iter().map(|t| Some(first.tasks[t].docs as u64)).collect();
    docs.push(None);
    let mut chance: Vec<f64> = tasks.iter().map(|t| first.tasks[t].chance).collect();
    chance.push(chance.iter().sum::<f64>() / tasks.len() as f64);
    let mut columns = vec![
        Column::new("task".into(), task_col),
        Column::new("metric".into(), metric_col),
        Column::new("docs".into(), docs),
        Column::new("chance".into(), chance),
    ];
    for (label, report) in models {
        let mut v: Vec<f64> = tasks.iter().map(|t| report.tasks[t].paper_value).collect();
        v.push(v.iter().sum::<f64>() / tasks.len() as f64);
        columns.push(Column::new(label.as_str().into(), v));
    }
    DataFrame::new(tasks.len() + 1, columns).map_err(polars_err)
}

/// Bars of the paper's metric per task (acc_norm on ARC-Challenge and HellaSwag, acc elsewhere), one per
/// model, with each task's chance level dashed.
pub fn accuracy_chart(models: &[(String, TaskReport)], title: &str) -> Result<Svg> {
    let tasks = common_tasks(models)?;
    let series: Vec<(String, Vec<f64>)> = models
        .iter()
        .map(|(label, r)| (label.clone(), tasks.iter().map(|t| r.tasks[t].paper_value).collect()))
        .collect();
    let chance: Vec<f64> = tasks.iter().map(|t| models[0].1.tasks[t].chance).collect();
    let axes = Axes::new(title, "task", "accuracy").size(820, 380);
    grouped_bar_chart(&axes, &tasks, &series, Some(("chance", &chance)))
}
