//! The model: the graph a labelling lives on (with its derived adjacency and rooted
//! forest) and borrowed views of the score arrays, validated together as a [`Problem`].

pub mod adjacency;
pub mod forest;
pub mod graph;
pub mod junction;
pub mod scores;

pub use graph::Graph;
pub use scores::{EdgeScores, ItemEdges, NodeScores, Problem};
