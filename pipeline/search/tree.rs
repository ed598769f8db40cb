//! The arena tree: nodes are reasoning states, edges are actions. Children
//! always have larger ids than their parents (nodes are only appended), which
//! lets bottom-up passes run as a reverse scan.

use serde::{Deserialize, Serialize};

use crate::engine::Token;

/// Index of a node in its tree's arena.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u32);

impl NodeId {
    pub const ROOT: NodeId = NodeId(0);
    pub fn idx(self) -> usize {
        self.0 as usize
    }
}

/// Why a thought stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminalCause {
    /// The model ended generation.
    Eog,
    /// The chain reached `max_depth` actions.
    DepthCap,
    /// The chain reached `max_thought_tokens`, or its rollout's token allotment ran out.
    TokenBudget,
    /// The model wrote the answer marker (`</Thought>` / `<Output>`) itself.
    AnswerMarker,
}

/// What a chain ending at a terminal node answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// Answer text, tags stripped and trimmed.
    pub text: String,
    /// Generated answer tokens (the closing marker included, end-of-generation not).
    pub tokens: Vec<Token>,
    pub confidences: Vec<f32>,
    /// Mean confidence of every generated token of the chain (thought and answer).
    pub reward: f64,
    /// Against the reference answer, when the seed has one.
    pub verified: Option<bool>,
    /// What the answer stands for when votes are counted
    /// ([`crate::stages::answer::answer_key`]); `None` when nothing can be extracted.
    #[serde(default)]
    pub key: Option<String>,
    /// The judge engine's score in [0, 1], once judged (value `judge` only).
    #[serde(default)]
    pub judge: Option<f64>,
}

/// One reasoning state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub parent: Option<NodeId>,
    pub children: Vec<NodeId>,
    /// Tokens this node adds to its parent's state (the action).
    pub tokens: Vec<Token>,
    /// Confidence of each action token; empty for injected text (root, reflection).
    pub confidences: Vec<f32>,
    /// Action text (lossy UTF-8 of the token bytes, for display: a character
    /// split between two actions shows as U+FFFD here, never in a chain).
    pub text: String,
    /// The action's raw bytes; chains join these before decoding.
    #[serde(default)]
    pub bytes: Vec<u8>,
    /// Visits.
    pub n: u32,
    /// Sum of backed-up values; `q = w / n`.
    pub w: f64,
    /// Rollouts whose chain ended exactly here.
    pub own: u32,
    /// Generated actions on the path from the root (reflection nodes add none).
    pub depth: u32,
    /// Actions since the last reflection on the path (what `max_depth` caps).
    pub seg_depth: u32,
    /// Generated thought tokens since the last reflection on the path.
    pub seg_tokens: u32,
    /// Tokens of the full path (prompt included): this node's prefix length.
    pub path_len: u32,
    /// Reflections on the path, this node included.
    pub reflections: u32,
    pub reflection: bool,
    pub terminal: Option<TerminalCause>,
    pub answer: Option<Answer>,
    /// Creation key (iteration, stream, n-th node of the stream): independent
    /// of how streams interleave, so children and export order use it.
    pub key: [u32; 3],
}

impl Node {
    pub fn q(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.w / self.n as f64
        }
    }
}

/// The arena.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Tree {
    /// A tree whose root holds the prompt tokens.
    pub fn new(prompt: Vec<Token>, prompt_text: String) -> Self {
        let len = prompt.len() as u32;
        Self {
            nodes: vec![Node {
                id: NodeId::ROOT,
                parent: None,
                children: Vec::new(),
                tokens: prompt,
                confidences: Vec::new(),
                bytes: prompt_text.as_bytes().to_vec(),
                text: prompt_text,
                n: 0,
                w: 0.0,
                own: 0,
                depth: 0,
                seg_depth: 0,
                seg_tokens: 0,
                path_len: len,
                reflections: 0,
                reflection: false,
                terminal: None,
                answer: None,
                key: [0, 0, 0],
            }],
        }
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.idx()]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.idx()]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Append a child of `parent`; depth bookkeeping follows from the flags.
    pub fn add_child(
        &mut self,
        parent: NodeId,
        tokens: Vec<Token>,
        confidences: Vec<f32>,
        bytes: Vec<u8>,
        reflection: bool,
        key: [u32; 3],
    ) -> NodeId {
        let id = NodeId(self.nodes.len() as u32);
        let p = &self.nodes[parent.idx()];
        let generated = confidences.len() as u32;
        let (depth, seg_depth, seg_tokens, reflections) = if reflection {
            (p.depth, 0, 0, p.reflections + 1)
        } else {
            (
                p.depth + 1,
                p.seg_depth + 1,
                p.seg_tokens + generated,
                p.reflections,
            )
        };
        let node = Node {
            id,
            parent: Some(parent),
            children: Vec::new(),
            path_len: p.path_len + tokens.len() as u32,
            tokens,
            confidences,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
            n: 0,
            w: 0.0,
            own: 0,
            depth,
            seg_depth,
            seg_tokens,
            reflections,
            reflection,
            terminal: None,
            answer: None,
            key,
        };
        self.nodes.push(node);
        self.nodes[parent.idx()].children.push(id);
        id
    }

    /// Order every node's children by creation key (after streams interleaved).
    pub fn sort_children(&mut self) {
        let keys: Vec<[u32; 3]> = self.nodes.iter().map(|n| n.key).collect();
        for n in &mut self.nodes {
            n.children.sort_by_key(|c| keys[c.idx()]);
        }
    }

    /// Node ids in canonical (creation key) order; parents precede children.
    pub fn canonical_order(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.nodes.iter().map(|n| n.id).collect();
        ids.sort_by_key(|id| self.nodes[id.idx()].key);
        ids
    }

    /// Root-to-`id` path, root first.
    pub fn path(&self, id: NodeId) -> Vec<NodeId> {
        let mut p = vec![id];
        let mut cur = id;
        while let Some(parent) = self.nodes[cur.idx()].parent {
            p.push(parent);
            cur = parent;
        }
        p.reverse();
        p
    }

    /// All tokens of the state `id` (prompt included).
    pub fn path_tokens(&self, id: NodeId) -> Vec<Token> {
        let mut out = Vec::with_capacity(self.node(id).path_len as usize);
        for n in self.path(id) {
            out.extend_from_slice(&self.node(n).tokens);
        }
        out
    }

    /// Back up `value` from `leaf` to the root; `leaf` gets one more own rollout.
    pub fn backprop(&mut self, leaf: NodeId, value: f64) {
        self.nodes[leaf.idx()].own += 1;
        let mut cur = Some(leaf);
        while let Some(id) = cur {
            let n = &mut self.nodes[id.idx()];
            n.n += 1;
            n.w += value;
            cur = n.parent;
        }
    }

    /// UCT score of `child` under `parent`; unvisited children score +inf.
    pub fn uct(&self, parent: NodeId, child: NodeId, c: f64) -> f64 {
        let ch = self.node(child);
        if ch.n == 0 {
            return f64::INFINITY;
        }
        let np = self.node(parent).n.max(1) as f64;
        ch.q() + c * (np.ln() / ch.n as f64).sqrt()
    }

    /// Tokens in the tree's trie: prompt, every action, and every terminal's
    /// close tag plus answer. What a perfectly cached search must evaluate at most.
    pub fn distinct_tokens(&self, close_tag_len: usize) -> u64 {
        self.nodes
            .iter()
            .map(|n| {
                n.tokens.len() as u64
                    + n.answer
                        .as_ref()
                        .map_or(0, |a| (close_tag_len + a.tokens.len()) as u64)
            })
            .sum()
    }
}
