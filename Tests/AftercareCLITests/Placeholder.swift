// Tests for AftercareCLITests are added with the work they prove.
import Testing
