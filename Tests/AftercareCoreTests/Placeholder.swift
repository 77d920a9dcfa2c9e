// Tests for AftercareCoreTests are added with the work they prove.
import Testing
